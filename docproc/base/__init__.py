"""The base every other part stands on: settings, typed errors, logs, traces, metrics, storage,
API keys, the broker's shared configuration and the queues' depth.

Nothing here imports another docproc package.
"""
