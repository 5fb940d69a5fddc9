"""Benchmarks, each run as `python -m benchmarks.NAME`:

    train_step    the project's train step against PyTorch and Keras 3 (JAX backend) peers
                  of the same architectures: images/s, ratio ours/theirs, GFLOP/s as a
                  fraction of a measured matmul peak (S1, S2, S4, VGG; batch 32/128/512);
                  --baseline=PATH adds another checkout's step, for a change's before
                  and after
    end_to_end    the S2 and S4 seed recipes run to completion by each framework: wall
                  time (compilation included) and test accuracy side by side
    profile_step  our train step's time per XLA operation, from a jax.profiler trace
    scan_vs_loop  one train step per jitted call against several (a loop inside the
                  program), and the convolutions XLA:CPU leaves out of its fast
                  kernels' order there with autodiff's gradients
    scan_conv_grads  one convolution's gradients, plain and inside `lax.scan`, from
                  autodiff and from research/xla_cpu.py's VJP in that order
    accelerator   the day an accelerator is lent, in one run: matmul peak, the main job
                  and its full variant end to end, the step in bfloat16 against float32,
                  with 1 against 16 steps per call, and over batch sizes, into one JSON

Helpers: `workloads` (the seed models and our step as the loop builds it), `common`
(interleaved repeats, medians, matmul peak, machine, tables), `accelerator_parts` (the
accelerator script's measurements), `torch_peers` and `keras_peers` (the peers;
`pip install -e '.[bench]'`), `baseline_peer` (another checkout's step, in a worker
process).
"""
