"""`echovideo eval`: the paper's table (Identity Average, Identity Variation, face presence, Dynamic Degree,
and Inception Distance given Inception weights) for a finished job, or for any folder of mp4s, grouped by
any manifest column or generation setting; or, with `--protocol consisid`, FaceSim-Arc and Inception
Distance exactly as ConsisID's published evaluation computes them (echovideo/metrics/consisid_eval.py), re-measured
from each clip's mp4 and photo.

A job's clips were scored by the rank that rendered them, on its exact frames; `eval` reads those scores.
A folder's clips are scored here from their decoded mp4 (H.264 is lossy, so scores can differ slightly from
in-render ones), unless `echovideo generate` left its OUT.json beside them.
"""

import importlib.util
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echovideo.errors import EchoVideoInputError
from echovideo.face.analysis_pack import AnalysisPack
from echovideo.face.stage import FaceStage
from echovideo.images import decode_identity_image, load_identity_image
from echovideo.locations import store_hint
from echovideo.metrics.clipscore import ClipScore
from echovideo.metrics.consisid_eval import consisid_scores, decode_photo
from echovideo.metrics.curricularface import CurricularFace
from echovideo.metrics.inception import InceptionFeatures, inception_distance
from echovideo.metrics.quality import motion_scores, score_clip
from echovideo.metrics.raft import RaftFlow
from echovideo.video_io import file_sha256, read_mp4
from ray_jobs.data.attempts import attempt_report
from ray_jobs.data.identities import read_identity
from ray_jobs.data.redact import redact
from ray_jobs.store.destination import Destination
from ray_jobs.store.outputs import read_manifest
from ray_jobs.tools.eval_table import (
    CONSISID_COLUMNS,
    ECHOVIDEO_COLUMNS,
    PLOTTED,
    format_table,
    output_names,
    summarise,
    write_plot,
)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PROTOCOLS = ("echovideo", "consisid")  # ours (the default) and ConsisID's published one (echovideo/metrics/consisid_eval.py)
def folder_clips(folder: Path, stage: Callable[[], FaceStage] | None, references: Path | None) -> list[dict]:
    """Every mp4 in a folder: `generate`'s OUT.json beside it gives its scores and settings; otherwise it is
    scored here against the photo of the same name (beside it or in `references`)."""
    clips = []
    for video in sorted(folder.glob("*.mp4")):
        sidecar = video.with_suffix(".json")
        record = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        clip = {"sample_id": video.stem, "path": video.name, "options": record.get("options", {}),
                "identity": record.get("identity"), "scores": record.get("scores"), "prompt": record.get("prompt")}
        if clip["scores"] is None:
            clip["identity"] = clip["identity"] or str(reference_photo(video, references))
            if stage is None:
                raise EchoVideoInputError("--ckpt", f"{video.name} has no scores beside it (no {sidecar.name})",
                                          "pass --ckpt CKPT or --preset tiny: its face stage scores the clip")
            frames, fps = read_mp4(video)
            face_stage = stage()
            reference = face_stage.largest_face(load_identity_image(clip["identity"]))
            clip["scores"] = score_clip(frames, fps, face_stage, None if reference is None else reference[1]).as_dict()
        clips.append(clip)
    if not clips:
        raise EchoVideoInputError("OUTPUT", f"{folder} holds no manifest.parquet and no .mp4",
                                  "pass a job's output, or a folder of clips with their identity photos")
    return clips


def reference_photo(video: Path, references: Path | None) -> Path:
    for folder in (references, video.parent):
        for suffix in PHOTO_SUFFIXES if folder else ():
            if (folder / f"{video.stem}{suffix}").is_file():
                return folder / f"{video.stem}{suffix}"
    raise EchoVideoInputError("--references", f"no identity photo for {video.name}",
                              f"put {video.stem}.jpg (or .png) beside it, or in the folder --references names")


def _photo_bytes(clip: dict, source: Destination) -> bytes:
    """The identity photo as the job kept it (`photos/<sha256>.<ext>` in the output: the reference a row named
    may be gone, or a URI whose public name no longer says how to reach it); else the reference itself."""
    kept = source.read(clip["photo"]) if clip.get("photo") else None
    return kept if kept is not None else read_identity(clip["identity"], "identity")


@dataclass(frozen=True)
class ClipMedia:
    photo: bytes
    frames: np.ndarray
    fps: int
    prompt: str | None


def _clip_media(clip: dict, source: Destination) -> ClipMedia:
    """The identity photo's bytes, the decoded frames and the prompt of one clip, read where the job put them."""
    photo = _photo_bytes(clip, source)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "clip.mp4"
        local.write_bytes(source.read(clip["path"]))
        frames, fps = read_mp4(local)
    return ClipMedia(photo, frames, fps, clip.get("prompt"))


Measure = Callable[[ClipMedia], dict | None]  # -> scores, None: nothing to measure


def rescore(clips: list[dict], source: Destination, measures: dict[str, Measure]) -> dict[str, int]:
    """Add every measure's scores to each clip, its mp4 and photo read and decoded once for all of them;
    -> per measure, the clips it could not measure (no readable photo or video, or it returned None)."""
    missed = dict.fromkeys(measures, 0)
    for clip in clips:
        try:
            media = _clip_media(clip, source)
        except (EchoVideoInputError, OSError) as exc:
            media, clip["skipped"] = None, redact(str(exc))[:200]
        for name, measure in measures.items():
            try:
                found = None if media is None else measure(media)
            except (EchoVideoInputError, OSError) as exc:
                found, clip["skipped"] = None, redact(str(exc))[:200]
            missed[name] += found is None
            clip["scores"] = {**(clip["scores"] or {}), **(found or {})}
    return missed


def _ours(stage: FaceStage, features: InceptionFeatures) -> Measure:
    def measure(media: ClipMedia) -> dict | None:
        distance = inception_distance(media.frames, media.fps, decode_identity_image(media.photo, "identity"), stage,
                                      features)
        return None if distance is None else {"inception_distance": distance}

    return measure


def _consisid(stage: FaceStage, features: InceptionFeatures | None, curricular: CurricularFace | None) -> Measure:
    def measure(media: ClipMedia) -> dict | None:
        found = consisid_scores(media.frames, decode_photo(media.photo), stage,
                                features.of_pixels if features else None, curricular)
        return None if found is None else {k: v for k, v in found.items() if v is not None}

    return measure


def _raft_motion(flow: RaftFlow) -> Measure:
    def measure(media: ClipMedia) -> dict:
        motion, dynamic = motion_scores(media.frames, media.fps, flow.pair_score)
        return {"motion": motion, "dynamic": dynamic}

    return measure


def _clip_score(score: ClipScore) -> Measure:
    def measure(media: ClipMedia) -> dict | None:
        return None if not media.prompt else {"clip_score": score(media.frames, media.prompt)}

    return measure


def _read_clips(output: str, source: Destination, stage: Callable[[], FaceStage] | None,
                references: str | None) -> list[dict]:
    try:
        has_manifest = source.exists("manifest.parquet")
    except OSError as exc:  # unreachable store, bad credentials
        raise EchoVideoInputError("OUTPUT", f"cannot read {source.name} ({redact(str(exc))[:200]})"
                                  f"{store_hint(str(exc))}",
                                  "check the path or URI and its credentials") from None
    if has_manifest:  # every finished clip, rejected ones too: `eval` measures the model, not the filtered set
        return read_manifest(output, ("ok", "rejected", "superseded"))
    if source.remote or not Path(source.root).is_dir():
        raise EchoVideoInputError("OUTPUT", f"{source.name} holds no manifest.parquet",
                                  "pass a job's output (run the job first) or a folder of mp4s")
    return folder_clips(Path(source.root), stage, Path(references) if references else None)


def _retries_report(clips: list[dict], source: Destination) -> dict:
    """What the quality gate cost a job that re-rendered rejected clips (nothing for a job that did not)."""
    if not any(clip.get("attempt") for clip in clips):
        return {}
    try:
        ranks = json.loads(source.read("summary.json") or b"{}").get("ranks_per_replica", 1)
    except (OSError, ValueError):  # no readable summary: device-seconds counted per replica
        ranks = 1
    return attempt_report(clips, ranks)


def evaluate(output: str, by: str | None, stage: Callable[[], FaceStage] | None, inception: str | None,
             references: str | None, plot: bool, protocol: str = "echovideo", raft: str | None = None,
             analysis: Callable[[], "AnalysisPack"] | None = None, curricularface: str | None = None,
             clip: str | None = None) -> dict:
    """-> {"table": rows, "text": the terminal table, "written": [files], "notes": [lines]}. `analysis`: the
    insightface pack ConsisID's protocol finds and embeds faces with (default: `stage`'s own detector)."""
    if protocol not in PROTOCOLS:
        raise EchoVideoInputError("--protocol", f"{protocol!r} is unknown", f"use one of {PROTOCOLS}")
    if stage is None and (inception is not None or protocol == "consisid"):
        raise EchoVideoInputError("--protocol" if protocol == "consisid" else "--inception",
                                  "needs the face stage that finds and aligns each face",
                                  "pass --ckpt CKPT (or --preset tiny) too")
    source = Destination(output)
    clips = _read_clips(output, source, stage, references)
    features = InceptionFeatures(inception, transform_input=protocol == "consisid") if inception is not None else None
    measures: dict[str, Measure] = {}  # every model loaded (and checked) before any clip is read
    # which weights produced the numbers, by file digest: two tables compare only if these match
    models = {name: file_sha256(Path(path)) for name, path in
              (("inception", inception), ("raft", raft), ("curricularface", curricularface)) if path}
    for flag, given in (("--curricularface", curricularface), ("--clip", clip)):
        if given is not None and protocol != "consisid":
            raise EchoVideoInputError(flag, "its score is a column of ConsisID's protocol", "add --protocol consisid")
    curricular = CurricularFace(curricularface) if curricularface is not None else None
    if protocol == "consisid":
        finder = analysis() if analysis is not None else stage()
        if analysis is not None:
            models["face_pack"] = {"name": finder.files.name, "files": finder.files.digests()}
        measures["consisid"] = _consisid(finder, features, curricular)
        if clip is not None:
            measures["clip_score"] = _clip_score(ClipScore(clip))
            models["clip"] = {path.name: file_sha256(path) for path in sorted(Path(clip).glob("*")) if path.is_file()}
    elif features is not None:
        measures["inception"] = _ours(stage(), features)
    if raft is not None:  # VBench's flow model: motion and Dynamic Degree measured again from each mp4
        measures["raft"] = _raft_motion(RaftFlow(raft))
    missed = rescore(clips, source, measures) if measures else {}
    notes = []
    if features is None:
        notes.append("Inception Distance: not computed (no weights are downloaded; pass --inception MODEL.onnx)")
    if protocol == "consisid":
        notes.append("protocol: ConsisID's (16 frames, det_size 320, padded retry, face-less frames skipped; "
                     "README \"Quality scores\")")
        pack = models.get("face_pack")
        notes.append(f"face pack: {pack['name']} ({', '.join(pack['files'])})" if pack else
                     "face pack: the preset's stand-in stage")
        if missed.get("clip_score"):
            notes.append(f"CLIPScore: {missed['clip_score']} clip(s) without a prompt or a readable file left out")
        if missed["consisid"]:
            notes.append(f"ConsisID protocol: {missed['consisid']} clip(s) without a face in the photo or a readable "
                         "file left out")
    elif missed.get("inception"):
        notes.append(f"Inception Distance: {missed['inception']} clip(s) without a face or a readable photo left out")
    if raft is not None:
        notes.append("motion: RAFT (VBench's Dynamic Degree)" +
                     (f"; {missed['raft']} clip(s) unreadable" if missed["raft"] else ""))
    else:
        notes.append("motion: OpenCV Farneback flow (pass --raft RAFT.onnx for VBench's RAFT)")
    retries = _retries_report(clips, source)
    if retries:
        notes.append(f"quality retries: pass rate by attempt {retries['pass_rate_by_attempt']}; "
                     f"{retries['gpu_seconds_per_kept_clip']} device-seconds per kept clip")
    columns = CONSISID_COLUMNS if protocol == "consisid" else ECHOVIDEO_COLUMNS
    table = summarise(clips, by, columns)
    table_name, plot_name = output_names(by, protocol)
    with source.output(table_name, ".json") as local:
        local.write_text(json.dumps({"by": by, "protocol": protocol, "table": table, "clips": len(clips),
                                     "models": models, **({"retries": retries} if retries else {})}, indent=1))
    written = [table_name]
    if plot and importlib.util.find_spec("matplotlib") is None:  # the plot is optional: the table is the result
        notes.append("plot: not drawn (matplotlib is not installed: pip install 'echovideo[eval]')")
    elif plot:
        with source.output(plot_name, ".png") as local:
            write_plot(clips, by, local, PLOTTED[protocol])
        written.append(plot_name)
    shown = [f"{source.name}/{name}" if source.remote else source.path(name) for name in written]
    return {"table": table, "text": format_table(table, by, columns), "written": shown, "notes": notes}
