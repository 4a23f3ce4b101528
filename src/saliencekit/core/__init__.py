"""The core layer: everything that computes, nothing that knows a method, a metric or an application.

``engine`` (points -> one forward + one ``autograd.grad`` per chunk -> fold), ``chunking`` (chunk
policies), ``speed`` (precision, channels_last, compile), ``allocator`` (CPU memory reuse),
``guard`` (the model left exactly as found), ``hooks`` (layer capture), ``noise`` (seeded,
chunk-invariant draws), ``targets`` and ``units`` (what is explained), ``checks`` (argument
validation) and ``imageops`` (blur, min-max, percentile). Modules here import only each other.
"""
