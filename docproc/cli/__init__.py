"""The ``docproc`` command: local runs, the whole stack on one machine (``up``), and the
operator's commands. The only part of the core that may import the API and the workers."""
