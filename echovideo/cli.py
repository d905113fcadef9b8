"""`echovideo` command line. The one module allowed to tie the model, parallel and Ray wings together."""

import argparse
import functools
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from echovideo.errors import EchoVideoInputError, ParallelGroupError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C
MODEL_COMMANDS = ("generate", "eval")  # the commands that load diffusers/transformers models in this process


GENERATION_FLAGS = ("height", "width", "frames", "steps", "guidance", "negative_prompt", "seed", "fps", "cache")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="render one clip on one device")
    p.add_argument("--prompt", required=True, help="what the person does")
    p.add_argument("--image", required=True, help="identity photo (one clearly visible face)")
    p.add_argument("--out", required=True, help="output .mp4 path")
    p.add_argument("--config", help="preset file (configs/presets/*.yaml): model and generation defaults")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ckpt", help="released checkpoint folder (ckpts/ with transformer/, vae/, ...), or its URI "
                                    "(s3://..., downloaded once per node into ECHOVIDEO_CACHE)")
    src.add_argument("--preset", choices=["tiny"], help="small random weights, built offline and cached")
    # Defaults are None so that a flag given on the command line wins over the --config file.
    p.add_argument("--height", type=int, help="multiple of 16 (default 480)")
    p.add_argument("--width", type=int, help="multiple of 16 (default 848, the released demo)")
    p.add_argument("--frames", type=int, help="4k+1 (default 49, the trained length)")
    p.add_argument("--steps", type=int, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, help="CFG scale G (default 6.0)")
    p.add_argument("--no-dynamic-cfg", action="store_true", help="constant CFG instead of the released schedule")
    p.add_argument("--negative-prompt", help='negative prompt (default "")')
    p.add_argument("--seed", type=int, help="default 42")
    p.add_argument("--fps", type=int, help="export frame rate (default 16)")
    p.add_argument("--cache", type=float, help="TeaCache threshold: reuse the DiT's last residual on steps whose "
                                               "timestep embedding barely moved (0 = off, default; 0.1-0.2)")
    p.add_argument("--riflex", action="store_true", help="RIFLEx: temporal RoPE for clips beyond 49 frames (e.g. 97)")
    p.add_argument("--dtype", help="auto (bf16 on GPU/NPU, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--device", help="auto, cpu, cuda[:N], npu[:N]")
    p.add_argument("--scheduler", choices=["dpm", "ddim"], help="dpm (released, default) or ddim")
    p.add_argument("--save-latents", help="also write the final latents (safetensors, key 'latents')")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (slow first video)")
    p.add_argument("--no-scores", action="store_true", help="skip the quality scores (identity, motion) that are "
                                                          "otherwise written beside the clip as OUT.json")
    par = p.add_argument_group("parallel (launch with torchrun --nproc-per-node ULYSSES*RING*CFG)")
    par.add_argument("--ulysses", type=int, default=1, help="Ulysses degree (divides the attention heads)")
    par.add_argument("--ring", type=int, default=1, help="ring-attention degree (any)")
    par.add_argument("--cfg-parallel", action="store_true", help="run the two CFG branches on two rank groups")
    par.add_argument("--kernel", default="auto", help="attention kernel: auto (on CUDA: the fastest measured), sdpa-cpu, "
                                                      "sdpa-cuda, cudnn, flash, efficient, flash-attn, "
                                                      "xfuser, npu-fusion, math")
    par.add_argument("--timeout", type=float, default=600.0,
                     help="seconds a rank waits for its peers before failing (a dead or hung rank)")
    p.set_defaults(handler=_generate)


def _resolve(args: argparse.Namespace):
    """Merge built-in defaults <- --config file <- command-line flags into (model spec, options)."""
    from dataclasses import replace

    from echovideo.run_config import RunConfig, load_run_config
    from echovideo.sampling import GenerationOptions

    config = load_run_config(args.config) if args.config else RunConfig()
    values = dict(config.generation)
    values.update({k: getattr(args, k) for k in GENERATION_FLAGS if getattr(args, k) is not None})
    if args.no_dynamic_cfg:
        values["dynamic_cfg"] = False
    if args.riflex:
        values["riflex"] = True
    options = GenerationOptions(**values).validate()
    model = config.model
    if args.ckpt or args.preset:
        model = replace(model, checkpoint=args.ckpt, preset=args.preset)
    flags = {k: getattr(args, k) for k in ("dtype", "device", "scheduler") if getattr(args, k) is not None}
    return replace(model, **flags) if flags else model, options


def _load(args: argparse.Namespace, model, root: Path):
    """The single-device pipeline, or under torchrun the parallel one (rank 0 first in the return)."""
    from echovideo.pipeline import EchoVideoPipeline

    if not _wants_parallel(args):
        return EchoVideoPipeline.from_pretrained(root, device=model.device, dtype=model.dtype,
                                                 scheduler=model.scheduler, compile=args.compile), 0
    from datetime import timedelta

    from echovideo.devices import resolve_device
    from parallel import ParallelConfig
    from parallel.launch import init_from_torchrun, launched_by_torchrun
    from parallel.pipeline import ParallelEchoVideoPipeline

    if not launched_by_torchrun():
        raise EchoVideoInputError("--ulysses/--ring/--cfg-parallel", "parallel degrees need one process per rank",
                                  "launch with torchrun --nproc-per-node ULYSSES*RING*CFG -m echovideo generate ...")
    config = ParallelConfig(ulysses=args.ulysses, ring=args.ring, cfg=2 if args.cfg_parallel else 1)
    device = init_from_torchrun(resolve_device(model.device).type, timedelta(seconds=args.timeout))
    pipe = ParallelEchoVideoPipeline.from_pretrained(root, config, device=str(device), dtype=model.dtype,
                                                     scheduler=model.scheduler, kernel=args.kernel,
                                                     timeout=timedelta(seconds=args.timeout), compile=args.compile)
    return pipe, pipe.mesh.rank


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _wants_parallel(args: argparse.Namespace) -> bool:
    from parallel.launch import launched_by_torchrun

    return args.ulysses != 1 or args.ring != 1 or args.cfg_parallel or launched_by_torchrun()


def _generate(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from echovideo.checkpoint_cache import checkpoint_folder
    from echovideo.images import load_identity_image
    from echovideo.metrics.quality import describe_scores
    from echovideo.presets.tiny import tiny_checkpoint
    from echovideo.video_io import atomic_output, write_mp4

    if not args.out.lower().endswith(".mp4"):
        raise EchoVideoInputError("--out", f"{args.out!r} does not end in .mp4", "name the output e.g. clip.mp4")
    if not args.prompt.strip():
        raise EchoVideoInputError("--prompt", "the prompt is empty", "describe what the person does")
    model, options = _resolve(args)
    if args.cfg_parallel:
        from parallel.config import ParallelConfig

        ParallelConfig(cfg=2).check_guidance(options.use_cfg, "--cfg-parallel",
                                             "drop --cfg-parallel, or use --guidance > 1")
    image = load_identity_image(args.image)  # before loading any model: bad input fails in a second
    if model.checkpoint is None and model.preset is None:
        raise EchoVideoInputError("--ckpt", "no model given", "pass --ckpt ckpts/ (released weights) or --preset tiny")
    if model.preset not in (None, "tiny"):
        raise EchoVideoInputError("model.preset", f"unknown preset {model.preset!r}", "use tiny or a checkpoint")
    root = checkpoint_folder(model.checkpoint) if model.checkpoint else tiny_checkpoint()
    pipe, rank = _load(args, model, root)
    try:
        result = pipe(args.prompt, image, options, scores=not args.no_scores)
    finally:
        _leave_group()
    if rank != 0:  # rank 0 alone writes
        return 0
    write_mp4(result.frames, args.out, fps=result.fps)
    if args.save_latents:
        with atomic_output(args.save_latents, ".safetensors") as tmp:
            save_file({"latents": result.latents.contiguous()}, str(tmp))
    print(f"wrote {args.out} ({result.frames.shape[0]} frames, {options.width}x{options.height}, {options.fps} fps)")
    if result.scores is not None:
        scores_path = Path(args.out).with_suffix(".json")
        with atomic_output(scores_path, ".json") as tmp:
            tmp.write_text(json.dumps({"video": Path(args.out).name, "prompt": args.prompt,
                                       "identity": str(Path(args.image).absolute()), "options": asdict(options),
                                       "scores": result.scores.as_dict()}, indent=1))
        print(f"scores in {scores_path}: {describe_scores(result.scores.as_dict())}")
    return 0


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    for name, handler, text in (("run", _run_job, "render every sample of a job file on Ray"),
                                ("plan", _plan_job, "validate a job file and print replicas, ranks and samples")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job", help="job file (configs/jobs/*.yaml)")
        p.add_argument("--address", help="Ray cluster address (auto, ray://...); default: an embedded local cluster")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a job-file value, e.g. --set parallel.replicas=4 (repeatable)")
        if name == "run":
            p.add_argument("--review", metavar="FILE", help="a gallery's review.json: clips it rejects are rendered "
                           "again as their row's next attempt (with fresh seeds; quality.review for this run)")
        if name == "plan":
            p.add_argument("--nodes", metavar="NxG:DEVICE", help="a cluster to plan for, no cluster needed (e.g. "
                           "4x8:H100): per-rank tokens, peak memory and step/clip time of every layout of the "
                           "released model, and which do not fit and why")
        p.set_defaults(handler=handler)


def _plan_job(args: argparse.Namespace) -> int:
    """Without --address, the plan is for this machine, read without starting a cluster."""
    from ray_jobs.data.job import load_job
    from ray_jobs.data.validation import validate_dataset
    from ray_jobs.runtime.placement import connect, local_nodes, make_plan

    spec = load_job(args.job, args.set)
    if args.nodes:
        from ray_jobs.runtime.layout_costs import describe, parse_nodes

        text, fits = describe(spec, parse_nodes(args.nodes))
        print(text)
        return 0 if fits else EXIT_BAD_INPUT
    count = validate_dataset(spec)
    if args.address:
        import ray

        connect(args.address, spec)
        free = {k: round(v, 1) for k, v in sorted(ray.available_resources().items()) if k in ("CPU", "GPU", "NPU")}
        print(f"cluster free now: {free or 'nothing'} (replicas that do not fit now wait for resources)")
    print(make_plan(spec, None if args.address else local_nodes(spec), can_grow=bool(args.address)).describe(count))
    return 0


def _run_job(args: argparse.Namespace) -> int:
    from ray_jobs.data.job import load_job
    from ray_jobs.runtime.engine import run_job
    from ray_jobs.runtime.recorder import EXIT_FAILED_JOB
    from ray_jobs.store.errors import JobFailure

    spec = load_job(args.job, [*args.set, *([f"quality.review={json.dumps(args.review)}"] if args.review else [])])
    try:
        report = run_job(spec, args.address)
    except JobFailure as exc:
        print(f"echovideo: job failed: {exc}; finished clips and the manifest are in {spec.output_name}", file=sys.stderr)
        return EXIT_FAILED_JOB
    except KeyboardInterrupt:
        print(f"echovideo: interrupted; finished clips and the manifest are in {spec.output_name}; run the same command "
              "again to render the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    s = report.summary
    in_review = s.get("rejected_in_review", 0)
    rejected = "".join(f", {n} rejected {why}" for n, why in ((s.get("rejected", 0) - in_review, "by the quality gate"),
                                                              (in_review, "in review")) if n)
    print(f"{s['ok']} ok{rejected}, {s['failed']} failed ({report.rendered} rendered now, {report.skipped} settled "
          "before); "
          f"outputs in {spec.output_name} (manifest.parquet, failures.parquet, summary.json, index.html)")
    return report.exit_code


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="pack a job's finished clips for training (WebDataset, CSV, CogVideoX lists)")
    p.add_argument("output", metavar="OUTPUT", help="the job's output folder or URI (holds manifest.parquet)")
    p.add_argument("--format", required=True, choices=["webdataset", "csv", "prompts-videos"],
                   help="webdataset: tar shards of <key>.mp4/.json/.txt + the identity photo (.jpg/.png); csv: "
                        "clips.csv; prompts-videos: prompt.txt + videos.txt + photos.txt + videos/ + photos/ "
                        "(CogVideoX fine-tuning)")
    p.add_argument("--to", required=True, help="destination folder or URI (s3://, gs://, ...)")
    p.add_argument("--shard-size", type=int, default=1000, help="clips per WebDataset shard (default 1000)")
    p.add_argument("--review", metavar="review.json", help="the gallery's review marks: clips marked reject stay "
                                                           "out, clips marked keep go in even below the quality gate")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from echovideo.locations import check_location
    from ray_jobs.data.redact import redact
    from ray_jobs.tools.export import export

    check_location(args.output, "OUTPUT")
    check_location(args.to, "--to")
    done = export(args.output, args.to, args.format, args.shard_size, args.review)
    left_out = ", ".join(f"{count} {why}" for why, count in sorted(done["left_out"].items())) or "none"
    print(f"{done['clips']} clip(s) exported to {redact(args.to)}; left out: {left_out}")
    if args.format == "webdataset":
        print(f"{done['shards']} shard(s) written, {done['skipped']} already there, {done['removed']} no longer "
              "listed removed")
    elif done.get("removed"):
        print(f"{done['removed']} file(s) no longer listed removed")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="the paper's quality table (identity, face presence, Dynamic Degree) for a job "
                                    "or a folder of clips")
    p.add_argument("output", metavar="OUTPUT", help="a job's output folder or URI (manifest.parquet), or a folder of "
                                                    ".mp4 clips with their identity photos")
    p.add_argument("--by", help="group by a manifest column or a generation setting, e.g. --by cache")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ckpt", help="checkpoint whose face stage scores clips that carry no scores, and aligns faces "
                                    "for --inception")
    src.add_argument("--preset", choices=["tiny"], help="the tiny preset's stand-in face stage")
    p.add_argument("--device", default="cpu", help="where the face stage runs (cpu, cuda[:N], npu[:N])")
    p.add_argument("--inception", metavar="MODEL.onnx", help="InceptionV3 as ONNX (1x3x299x299 in, 2048 out): adds "
                                                             "Inception Distance (never downloaded)")
    p.add_argument("--references", help="folder of identity photos named like the clips (default: beside them)")
    p.add_argument("--no-plot", action="store_true", help="skip eval.png (the score distributions)")
    p.add_argument("--raft", metavar="RAFT.onnx", help="VBench's RAFT as ONNX (two 1x3xHxW frames in 0-255 in, the "
                                                       "1x2xHxW flow last out): motion and Dynamic Degree measured "
                                                       "with it instead of Farneback (never downloaded)")
    p.add_argument("--protocol", default="echovideo", choices=["echovideo", "consisid"],
                   help="echovideo (default: every scored frame, a face-less frame scores 0) or consisid (ConsisID's "
                        "published eval: 16 frames, FaceSim-Arc and Inception Distance, face-less frames skipped; "
                        "needs --ckpt or --preset); written to eval-consisid*.json")
    p.add_argument("--curricularface", metavar="MODEL.onnx", help="with --protocol consisid: CurricularFace IR-101 "
                                                                  "as ONNX (1x3x112x112 in): adds FaceSim-Cur (never "
                                                                  "downloaded)")
    p.add_argument("--clip", metavar="CLIP_FOLDER", help="with --protocol consisid: a saved CLIPModel folder (e.g. "
                                                         "openai/clip-vit-base-patch32): adds ConsisID's CLIPScore")
    p.add_argument("--face-pack", metavar="NAME", help="with --protocol consisid --ckpt: the insightface pack under "
                                                       "face_encoder/models/ (default buffalo_l, what ConsisID's "
                                                       "script loads; antelopev2 is our render-time stage's)")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from echovideo.locations import check_location
    from ray_jobs.data.redact import redact
    from ray_jobs.tools.evaluate import evaluate

    check_location(args.output, "OUTPUT")

    @functools.cache  # loaded once, on first need
    def face_stage():
        import torch

        from echovideo.checkpoint_cache import checkpoint_folder
        from echovideo.face import load_face_stage
        from echovideo.presets.tiny import tiny_checkpoint

        root = checkpoint_folder(args.ckpt) if args.ckpt else tiny_checkpoint()
        return load_face_stage(root / "face_encoder", torch.device(args.device))

    def analysis_pack():
        """What ConsisID's script loads: insightface's pack by name from the checkpoint's face_encoder."""
        import torch

        from echovideo.checkpoint_cache import checkpoint_folder
        from echovideo.face.analysis_pack import (
            DEFAULT_PACK,
            AnalysisPack,
            resolve_pack,
        )

        folder = checkpoint_folder(args.ckpt) / "face_encoder"
        return AnalysisPack(resolve_pack(folder, args.face_pack or DEFAULT_PACK), torch.device(args.device))

    if args.face_pack and not (args.ckpt and args.protocol == "consisid"):
        raise EchoVideoInputError("--face-pack", "names the insightface pack of --protocol consisid with --ckpt",
                                  "add --protocol consisid --ckpt CKPT, or leave --face-pack out")
    analysis = analysis_pack if args.ckpt and args.protocol == "consisid" else None
    done = evaluate(args.output, args.by, face_stage if args.ckpt or args.preset else None, args.inception,
                    args.references, plot=not args.no_plot, protocol=args.protocol,
                    raft=args.raft, analysis=analysis, curricularface=args.curricularface, clip=args.clip)
    print(done["text"])
    for line in done["notes"]:
        print(line)
    print("written: " + ", ".join(redact(str(path)) for path in done["written"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echovideo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_jobs(sub)
    _add_export(sub)
    _add_eval(sub)
    return parser


def _quiet_library_output() -> None:
    """Loading bars and info chatter from diffusers/transformers would bury our one-line errors."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose and args.command in MODEL_COMMANDS:  # the rest never import them: they start fast
        _quiet_library_output()
    try:
        return args.handler(args)
    except EchoVideoInputError as exc:
        print(f"echovideo: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ParallelGroupError as exc:
        print(f"echovideo: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
