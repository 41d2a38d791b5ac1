"""EoMT forward speed: segstream's model against transformers' on the same weights and input.

    python benchmarks/model_forward.py                       # CPU: S/640, batch 1, fp32
    python benchmarks/model_forward.py --device cuda --sizes S B L --batch 1 8 --dtype bf16 --compile

Both models run in one process, alternating, on identical random weights (transformers' model is
built first and its weights loaded into ours). Prints seconds per batch, frames per second and the
ratio ours / transformers. Not a test: speed varies with the machine; record results in
docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from segstream.models.eomt import EoMT, config_for_size, convert_transformers_state_dict

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_pair(size: str, img_size: int, device: torch.device):
    from transformers import EomtConfig, EomtForUniversalSegmentation

    cfg = config_for_size(size, img_size=img_size, num_classes=133)
    hf_cfg = EomtConfig(
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        image_size=img_size,
        num_queries=cfg.num_queries,
        num_labels=cfg.num_classes,
        num_blocks=cfg.num_query_blocks,
        use_swiglu_ffn=cfg.swiglu,
    )
    reference = EomtForUniversalSegmentation(hf_cfg).eval()
    ours = EoMT(cfg)
    ours.load_state_dict(convert_transformers_state_dict(reference.state_dict()), strict=False)
    return ours.eval().to(device), reference.to(device)


def time_it(fn, warmup: int, repeat: int, device: torch.device) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["S"])
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd versions")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}"
    print(f"# machine: {gpu}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, dtype {args.dtype}")
    print("| model | batch | mode | ours s/batch | transformers s/batch | ours FPS | transformers FPS | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        ours, reference = build_pair(size, args.img_size, device)
        modes = [("eager", ours, reference)]
        if args.compile:
            modes.append(("compiled", torch.compile(ours, dynamic=False), torch.compile(reference, dynamic=False)))
        for batch in args.batch:
            pixels = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
            for probs in (1.0, 0.0):
                # transformers' default attn_mask_probs of 1 runs masked attention and four extra
                # mask predictions at inference; at 0 it computes what ours (and tue-mps) does.
                with torch.no_grad():
                    reference.attn_mask_probs.fill_(probs)
                for mode, ours_fn, ref_fn in modes:
                    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

                    def run_ours(fn=ours_fn, autocast=autocast, pixels=pixels):
                        with torch.inference_mode(), autocast:
                            fn(pixels)

                    def run_reference(fn=ref_fn, autocast=autocast, pixels=pixels):
                        with torch.inference_mode(), autocast:
                            fn(pixel_values=pixels)

                    t_ours = time_it(run_ours, args.warmup, args.repeat, device)
                    t_ref = time_it(run_reference, args.warmup, args.repeat, device)
                    print(
                        f"| {size}/{args.img_size} | {batch} | {mode}, transformers attn_mask_probs {probs:g} | "
                        f"{t_ours:.4f} | {t_ref:.4f} | {batch / t_ours:.1f} | {batch / t_ref:.1f} | "
                        f"{t_ref / t_ours:.2f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
