"""Captioning throughput (clips/s) of a Qwen2.5-VL-7B-shaped VLM with random weights through ``Captioner``.

What it measures: ``caption.vlm.Captioner`` with the ``transformers`` backend (loaded through the real
``from_pretrained(path)`` path), 8 frames per clip at <= 448x448 px, a fixed number of new tokens (EOS ignored,
so random weights cost what real ones would), bf16 on one GPU. Frames are pre-made JPEGs in the
``caption_frames`` column (the CPU frame stage is measured separately: it runs in other processes in a real
pipeline). Prints one JSON line per batch size with clips/s, the prefill/decode split and peak memory.

    python benchmarks/bench_caption_gpu.py --preset qwen2.5-vl-7b --batch-sizes 8,16,32 --new-tokens 64

The same builder makes the tiny model the unit tests load (``build_random_vlm(dir, "tiny")``): a byte-level
tokenizer (256 tokens + specials) and a Qwen2-VL chat template, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

PRESETS = {
    "tiny": dict(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                    window_size=56, fullatt_block_indexes=[1]),
        vocab_size=None, max_pixels=56 * 56 * 4),
    "qwen2.5-vl-7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                  rope_theta=1000000.0),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        vocab_size=152064, max_pixels=448 * 448),
}


def build_tokenizer():
    """A byte-level BPE tokenizer with no merges (any text encodes) plus Qwen's special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_random_vlm(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0, device: str = "cpu") -> str:
    """Write a randomly initialised Qwen2.5-VL model + processor to ``out_dir`` (safetensors); returns the path."""
    import torch
    from curate.compat import ensure_torchvision

    ensure_torchvision()
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    p = PRESETS[preset]
    tok = build_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    special = dict(bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=p["vocab_size"] or len(tok), max_position_embeddings=32768, **p["text"], **special),
        vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           tokens_per_second=2, **p["vision"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **special)
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if preset != "tiny" else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    model.generation_config.update(do_sample=False, **special)
    model.save_pretrained(out_dir)
    image_proc = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=p["max_pixels"])
    Qwen2_5_VLProcessor(image_processor=image_proc, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=CHAT_TEMPLATE).save_pretrained(out_dir)
    del model
    return str(out_dir)


def synthetic_frames(n_clips: int, n_frames: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Packed-JPEG ``caption_frames`` values: smooth random images (real JPEG sizes), one list per clip."""
    import numpy as np

    from caption.frames import encode_jpeg, pack_jpegs

    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(n_clips):
        base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
        frames = [np.kron(np.roll(base, t, axis=1), np.ones((16, 16, 1), np.uint8))[:h, :w] for t in range(n_frames)]
        out.append(pack_jpegs([encode_jpeg(np.ascontiguousarray(f)) for f in frames]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen2.5-vl-7b", choices=sorted(PRESETS))
    ap.add_argument("--model-dir", default="/dev/shm/tessera-vlm-bench")
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--clips", type=int, default=64, help="clips per timed pass")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="448x448", help="frame WxH (<= 448x448 px)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--attn", default="sdpa")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    import torch

    from caption.frames import FrameConfig
    from caption.vlm import Captioner, VLMConfig

    w, h = (int(x) for x in args.size.split("x"))
    t0 = time.time()
    if not (Path(args.model_dir) / "config.json").exists():
        build_random_vlm(args.model_dir, args.preset, device="cuda" if torch.cuda.is_available() else "cpu")
    t_build = time.time() - t0
    t0 = time.time()
    cfg = VLMConfig(backend="transformers", model=args.model_dir, kinds=("short",),
                    frames=FrameConfig(n_frames=args.frames, max_pixels=w * h),
                    max_new_tokens=(("short", args.new_tokens),), ignore_eos=True, validate=False,
                    attn_implementation=args.attn, batch_size=max(int(b) for b in args.batch_sizes.split(",")))
    captioner = Captioner(cfg)
    t_load = time.time() - t0
    print(json.dumps({"event": "loaded", "build_s": round(t_build, 1), "load_s": round(t_load, 1),
                      "image_processor": type(captioner.hf.processor.image_processor).__name__,
                      "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}), flush=True)
    frames = synthetic_frames(args.clips, args.frames, (w, h))
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        captioner.cfg = cfg = VLMConfig(**{**cfg.__dict__, "batch_size": bs})
        batch = lambda n: {"clip_id": np.array([f"c{i}" for i in range(n)], dtype=object),  # noqa: E731
                           "caption_frames": np.array(frames[:n], dtype=object)}
        captioner(batch(bs))  # warm-up (allocator, kernels)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        out = captioner(batch(args.clips))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.time() - t0
        # prefill-only cost: the same batch with one new token
        captioner.cfg = VLMConfig(**{**cfg.__dict__, "max_new_tokens": (("short", 1),)})
        t1 = time.time()
        captioner(batch(bs))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        prefill = (time.time() - t1) / bs
        captioner.cfg = cfg
        ok = int((out["caption_status"] == "ok").sum())
        print(json.dumps({
            "batch_size": bs, "clips": args.clips, "ok": ok, "seconds": round(dt, 2),
            "clips_per_s": round(args.clips / dt, 2), "prefill_s_per_clip": round(prefill, 4),
            "tokens_per_clip": int(out["caption_tokens"].mean()), "new_tokens": args.new_tokens,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None,
        }), flush=True)


if __name__ == "__main__":
    main()
