"""quantart_benchmarks: ``quantart bench`` (speed, memory and fidelity of every backend), the
training throughput probe, the HTTP load test and the GPU device check."""
