"""``pipelines.loop.LoopConfig``: every profile gives exactly the VAE, DiT and eval-text configs it gave before the
loop nested those configs (``RECORDED``: the values the flat LoopConfig of commit 7668ec9 produced, as literals, with
deliberate changes since: the gpu profile's eval in batches of 64 and its DiT stopping at 480 s, not 515; the cpu
profile's 4x-spatial VAE on 9-frame clips, 2x2 DiT patches and the GPU profile's DiT recipe; eval-text's seen group), and
overrides reach every field by its nested name or its old flat one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.loop import (
    FLAT_NAMES, LOOP_FILLS, PROFILES, LoopConfig, dit_train_config, eval_config, field_names, override,
    vae_train_config,
)

# Each profile with dataset="DATA", out="OUT", text_path="TEXT"; the DiT's held-out sample prompts ("p1", "p2"), the
# loop started at t = 1000 s. Fields added to the train/eval configs later are not compared; any recorded one is.
RECORDED = {
    'default': {
        'vae': dict(
            batch_size=4, betas=(0.9, 0.99), bf16=True, ckpt_every=150, data_root='DATA', device='auto',
            disc_channels=64, disc_lr=0.0001, disc_start=5000, disc_weight=0.0, ema_decay=0.99, grad_clip=1.0,
            holdout_pct=0.0, image_prob=0.1, keep_last=1, kl_weight=1e-06, log_every=3, lpips_path='',
            lpips_weight=0.1, lr=0.0005, num_frames=(17,), num_workers=0, preset='tiny', preview_every=150,
            resolutions=((64, 64),), resume=False, run_dir='OUT/vae', seed=0, steps=150, time_budget_s=0.0,
            warmup_steps=7, weight_decay=0.0),
        'dit': dict(
            betas=(0.9, 0.99), bf16=True, bucket_areas=(4096,), bucket_frames=(17,), caption_dropout=0.1,
            caption_mix=(('short', 1.0),), checkpointing=False, ckpt_every=300, compile=False, cooldown=0.0,
            data_root='DATA', depth=0, device='auto', ema_decay=0.99, export=True, grad_clip=1.0, heads=0, hidden=0,
            keep_last=1, latent_scale=0.0, latent_shift=0.0, latents='', log_every=3, logit_mean=0.0, logit_std=1.0,
            lr=0.0005, max_batch=32, pack=False, pack_attention='auto', pack_tokens=0, parallel='ddp', patch=(1, 2, 2),
            pooled_text=False, prefetch=-1, preset='tiny', profile_from=50, profile_steps=0, resume=False,
            run_dir='OUT/dit', sample_cfg=5.0, sample_every=300, sample_fps=8, sample_frames=17, sample_prompts=('p1',
            'p2'), sample_seeds=(0,), sample_size=(64, 64), sample_steps=20, seed=0, shift=True, steps=300,
            stop_at=0.0, t_uniform=0.0, task_mix=(0.5, 0.15, 0.1, 0.05, 0.1, 0.1), text_max_length=256,
            text_path='TEXT', time_budget_s=0.0, time_shift=1.0, token_budget=4096, vae='OUT/vae/checkpoints',
            warmup_steps=15, weight_decay=0.0),
        'eval': dict(
            batch=16, cfg=5.0, device='auto', expand=False, expand_backend='openai', expand_model='', frames=17,
            heldout_repeat=1, limit=0, out='OUT/eval-text', per_triple=1, phrasings=('train', 'reordered', 'synonyms',
            'distractor'), pipeline='OUT/dit/pipeline', prompt_seed=0, sample_shift=-1.0, seeds=4, seen='shown', seen_motions=1,
            size=64, solver='euler', split='', split_seed=0, steps=20, workers=-1),
    },
    'cpu': {
        'vae': dict(
            batch_size=2, betas=(0.9, 0.99), bf16=True, ckpt_every=600, data_root='DATA', device='auto',
            disc_channels=64, disc_lr=0.0001, disc_start=5000, disc_weight=0.0, ema_decay=0.99, grad_clip=1.0,
            holdout_pct=0.0, image_prob=0.1, keep_last=1, kl_weight=1e-06, log_every=12, lpips_path='',
            lpips_weight=0.1, lr=0.001, num_frames=(9,), num_workers=0, preset='tiny-f4c8-dc-grouped', preview_every=600,
            resolutions=((64, 64),), resume=False, run_dir='OUT/vae', seed=0, steps=600, time_budget_s=0.0,
            warmup_steps=30, weight_decay=0.0),
        'dit': dict(
            betas=(0.9, 0.99), bf16=True, bucket_areas=(4096,), bucket_frames=(17,), caption_dropout=0.1,
            caption_mix=(('short', 1.0),), checkpointing=False, ckpt_every=4000, compile=False, cooldown=0.0,
            data_root='DATA', depth=0, device='auto', ema_decay=0.99, export=True, grad_clip=1.0, heads=0, hidden=0,
            keep_last=1, latent_scale=0.0, latent_shift=0.0, latents='', log_every=40, logit_mean=0.0, logit_std=1.0,
            lr=0.001, max_batch=32, pack=False, pack_attention='auto', pack_tokens=0, parallel='ddp', patch=(1, 2, 2),
            pooled_text=True, prefetch=-1, preset='tiny', profile_from=50, profile_steps=0, resume=False,
            run_dir='OUT/dit', sample_cfg=5.0, sample_every=4000, sample_fps=8, sample_frames=17, sample_prompts=('p1',
            'p2'), sample_seeds=(0,), sample_size=(64, 64), sample_steps=20, seed=0, shift=True, steps=4000,
            stop_at=0.0, t_uniform=0.0, task_mix=(0.85, 0.05, 0.03, 0.02, 0.03, 0.02), text_max_length=256,
            text_path='TEXT', time_budget_s=0.0, time_shift=3.0, token_budget=4096, vae='OUT/vae/checkpoints',
            warmup_steps=200, weight_decay=0.0),
        'eval': dict(
            batch=16, cfg=5.0, device='auto', expand=False, expand_backend='openai', expand_model='', frames=17,
            heldout_repeat=1, limit=4, out='OUT/eval-text', per_triple=1, phrasings=('train', 'reordered', 'synonyms',
            'distractor'), pipeline='OUT/dit/pipeline', prompt_seed=0, sample_shift=-1.0, seeds=4, seen='shown', seen_motions=1,
            size=64, solver='euler', split='', split_seed=0, steps=20, workers=-1),
    },
    'smoke': {
        'vae': dict(
            batch_size=2, betas=(0.9, 0.99), bf16=True, ckpt_every=6, data_root='DATA', device='auto',
            disc_channels=64, disc_lr=0.0001, disc_start=5000, disc_weight=0.0, ema_decay=0.99, grad_clip=1.0,
            holdout_pct=0.0, image_prob=0.1, keep_last=1, kl_weight=1e-06, log_every=1, lpips_path='',
            lpips_weight=0.1, lr=0.0005, num_frames=(17,), num_workers=0, preset='tiny', preview_every=6,
            resolutions=((32, 32),), resume=False, run_dir='OUT/vae', seed=0, steps=6, time_budget_s=0.0,
            warmup_steps=1, weight_decay=0.0),
        'dit': dict(
            betas=(0.9, 0.99), bf16=True, bucket_areas=(1024,), bucket_frames=(17,), caption_dropout=0.1,
            caption_mix=(('short', 1.0),), checkpointing=False, ckpt_every=8, compile=False, cooldown=0.0,
            data_root='DATA', depth=0, device='auto', ema_decay=0.99, export=True, grad_clip=1.0, heads=0, hidden=0,
            keep_last=1, latent_scale=0.0, latent_shift=0.0, latents='', log_every=1, logit_mean=0.0, logit_std=1.0,
            lr=0.0005, max_batch=8, pack=False, pack_attention='auto', pack_tokens=0, parallel='ddp', patch=(1, 2, 2),
            pooled_text=False, prefetch=-1, preset='tiny', profile_from=4, profile_steps=0, resume=False,
            run_dir='OUT/dit', sample_cfg=5.0, sample_every=8, sample_fps=8, sample_frames=17, sample_prompts=('p1',
            'p2'), sample_seeds=(0,), sample_size=(32, 32), sample_steps=3, seed=0, shift=True, steps=8, stop_at=0.0,
            t_uniform=0.0, task_mix=(0.5, 0.15, 0.1, 0.05, 0.1, 0.1), text_max_length=256, text_path='TEXT',
            time_budget_s=0.0, time_shift=1.0, token_budget=1024, vae='OUT/vae/checkpoints', warmup_steps=1,
            weight_decay=0.0),
        'eval': dict(
            batch=16, cfg=5.0, device='auto', expand=False, expand_backend='openai', expand_model='', frames=17,
            heldout_repeat=1, limit=1, out='OUT/eval-text', per_triple=1, phrasings=('train', 'reordered', 'synonyms',
            'distractor'), pipeline='OUT/dit/pipeline', prompt_seed=0, sample_shift=-1.0, seeds=4, seen='shown', seen_motions=1,
            size=64, solver='euler', split='', split_seed=0, steps=3, workers=-1),
    },
    'gpu': {
        'vae': dict(
            batch_size=16, betas=(0.9, 0.99), bf16=True, ckpt_every=20000, data_root='DATA', device='auto',
            disc_channels=64, disc_lr=0.0001, disc_start=5000, disc_weight=0.0, ema_decay=0.999, grad_clip=1.0,
            holdout_pct=0.0, image_prob=0.1, keep_last=1, kl_weight=1e-06, log_every=10, lpips_path='',
            lpips_weight=0.1, lr=0.0008, num_frames=(9,), num_workers=8, preset='small-f4c4-grouped', preview_every=20000,
            resolutions=((128, 128),), resume=False, run_dir='OUT/vae', seed=0, steps=20000, time_budget_s=150,
            warmup_steps=50, weight_decay=0.0),
        'dit': dict(
            betas=(0.9, 0.99), bf16=True, bucket_areas=(16384,), bucket_frames=(17,), caption_dropout=0.1,
            caption_mix=(('short', 1.0),), checkpointing=False, ckpt_every=100000, compile=True, cooldown=0.2,
            data_root='DATA', depth=0, device='auto', ema_decay=0.999, export=True, grad_clip=1.0, heads=0, hidden=0,
            keep_last=1, latent_scale=0.0, latent_shift=0.0, latents='', log_every=10, logit_mean=0.0, logit_std=1.0,
            lr=0.0004, max_batch=128, pack=False, pack_attention='auto', pack_tokens=0, parallel='ddp', patch=(1, 4,
            4), pooled_text=True, prefetch=-1, preset='B', profile_from=50, profile_steps=0, resume=False,
            run_dir='OUT/dit', sample_cfg=5.0, sample_every=100000, sample_fps=8, sample_frames=17,
            sample_prompts=('p1', 'p2'), sample_seeds=(0,), sample_size=(128, 128), sample_steps=20, seed=0,
            shift=True, steps=100000, stop_at=1480.0, t_uniform=0.3, task_mix=(0.85, 0.05, 0.03, 0.02, 0.03, 0.02),
            text_max_length=256, text_path='TEXT', time_budget_s=0, time_shift=3.0, token_budget=40960,
            vae='OUT/vae/checkpoints', warmup_steps=100, weight_decay=0.0),
        'eval': dict(
            batch=64, cfg=5.0, device='auto', expand=False, expand_backend='openai', expand_model='', frames=17,
            heldout_repeat=1, limit=0, out='OUT/eval-text', per_triple=1, phrasings=('train', 'reordered', 'synonyms',
            'distractor'), pipeline='OUT/dit/pipeline', prompt_seed=0, sample_shift=-1.0, seeds=4, seen='shown', seen_motions=1,
            size=128, solver='euler', split='', split_seed=0, steps=20, workers=-1),
    },

}


def effective(cfg: LoopConfig) -> dict[str, dict]:
    """The three configs ``pipelines.loop.run`` would train and evaluate with, as dicts."""
    cfg = dataclasses.replace(cfg, dataset="DATA", out="OUT", text_path="TEXT")
    return {
        "vae": dataclasses.asdict(vae_train_config(cfg, Path("OUT/vae"))),
        "dit": dataclasses.asdict(dit_train_config(cfg, Path("OUT/vae"), Path("OUT/dit"), ("p1", "p2"), 1000.0)),
        "eval": dataclasses.asdict(eval_config(cfg, Path("OUT/dit/pipeline"), Path("OUT/eval-text"))),
    }


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_each_profile_gives_the_recorded_train_and_eval_configs(name):
    got = effective(LoopConfig() if name == "default" else PROFILES[name])
    for part, want in RECORDED[name].items():
        assert {k: got[part].get(k, "<missing>") for k in want} == want, (name, part)


def test_every_profile_is_recorded():
    assert set(PROFILES) | {"default"} == set(RECORDED)


def test_override_takes_nested_and_old_flat_names_and_refuses_what_the_loop_fills_in():
    changes = {"vae.steps": 7, "dit_lr": 1e-3, "size": 32, "eval_limit": 2, "eval.solver": "heun"}
    cfg = override(PROFILES["cpu"], changes)
    assert (cfg.vae.steps, cfg.dit.lr, cfg.size, cfg.eval.limit, cfg.eval.solver) == (7, 1e-3, 32, 2, "heun")
    assert cfg.vae.batch_size == PROFILES["cpu"].vae.batch_size and cfg.dit.steps == PROFILES["cpu"].dit.steps
    assert effective(cfg)["dit"]["lr"] == 1e-3 and effective(cfg)["vae"]["ckpt_every"] == 7  # reaches the trainers
    for flat, nested in FLAT_NAMES.items():  # every old name is a field the loop passes through
        part, field = nested.split(".")
        assert field in {f.name for f in dataclasses.fields(getattr(cfg, part))} and field not in LOOP_FILLS[part]
        assert flat in field_names(cfg) and nested in field_names(cfg)
    with pytest.raises(ValueError, match="the loop sets vae.seed itself"):
        override(cfg, {"vae.seed": 1})
    for bad in ("vae.no_such_field", "no_such_field", "vae"):
        with pytest.raises(ValueError, match="not a LoopConfig field"):
            override(cfg, {bad: 1})
