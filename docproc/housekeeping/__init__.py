"""What the scheduler's ticks run over stored state: stalled jobs (``watchdog``), expired data
(``retention``), and the after-end steps every process registers (``after_end``)."""
