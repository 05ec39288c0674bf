"""Which kernel runs the network's attention under PyTorch.

Profiles one call of `keras_dsd.backend.dot_product_attention` (what
`SelfAttention` calls, with `(B, N, heads, head_dim)` tensors) at a DSD
shape and prints the device kernels and the aten ops that ran, and
whether a fused one (flash / memory-efficient / cuDNN scaled-dot-product
attention) is among them. On CPU it prints the aten ops only.

    KERAS_BACKEND=torch python benchmarks/attention_kernel.py --dtype bfloat16
"""

import argparse

import keras
import numpy as np

import keras_dsd

FUSED = ("flash", "efficient", "cudnn", "fmha", "scaled_dot_product")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if keras.backend.backend() != "torch":
        raise SystemExit("attention_kernel.py: use KERAS_BACKEND=torch.")
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    shape = (args.batch_size, args.tokens, args.heads, args.head_dim)
    rng = np.random.default_rng(0)
    q, k, v = (
        keras.ops.convert_to_tensor(rng.normal(size=shape), args.dtype)
        for _ in range(3)
    )
    attention = keras_dsd.backend.dot_product_attention
    attention(q, k, v)  # warm up
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        attention(q, k, v)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    names = sorted({event.key for event in prof.key_averages()})
    print(f"device: {q.device}, dtype {args.dtype}, q/k/v {shape}")
    for name in names:
        print(f"  ran: {name}")
    fused = [n for n in names if any(f in n.lower() for f in FUSED)]
    print(f"fused attention: {'yes: ' + ', '.join(fused) if fused else 'NO'}")


if __name__ == "__main__":
    main()
