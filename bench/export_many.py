"""`dreamframe export-many` on 1,000 finished movies: time and peak memory of the merge.

The movies are copies of one demo run (`dreamframe demo`: 24 keyframes, 132 QA items, long-video features made with a
tiny random-weight vision tower so `long_video.json` is merged too), made by this script without rendering anything:
every JSON file is copied and every picture and video hard-linked, so each folder is a finished run folder as
`dreamframe status` sees it (same digests). The merge runs in a fresh process per repeat (`dreamframe export-many ROOT
--quiet`), timed from the command's start to its exit, its peak resident memory read from the kernel (getrusage of the
child); the same interpreter's peak after importing dreamframe's CLI alone is measured apart. It reads JSON and
checks that files exist; no picture or video is opened. Writes results/export_many.json.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
COPIED = (".json", ".jsonl", ".md", ".srt")   # what is copied; everything else a movie's export names is hard-linked


def demo_run(folder: Path) -> Path:
    "A demo run with its long-video features (a tiny random-weight BLIP-2 vision tower)."
    from transformers import Blip2VisionConfig, Blip2VisionModel
    run = folder / "demo"
    subprocess.run([sys.executable, "-m", "dreamframe.cli", "demo", str(run), "--quiet"], env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    tower = Blip2VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14)
    Blip2VisionModel(tower).save_pretrained(folder / "tower")
    subprocess.run([sys.executable, "-m", "dreamframe.cli", "long-video", str(run), "--long-video-tower",
                    str(folder / "tower"), "--quiet"], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return run


def synthetic_movies(demo: Path, root: Path, count: int) -> None:
    "`count` finished run folders under `root`, each the demo's story, QA and exports (JSON copied, media linked)."
    keep = ["movie.json", "qa.json", "config.json", "pipeline.json", "frames", "export"]
    for k in range(count):
        target = root / f"movie-{k:04d}"
        for name in keep:
            source = demo / name
            if source.is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)
                continue
            for path in source.rglob("*"):
                if path.is_dir():
                    continue
                destination = target / path.relative_to(demo)
                destination.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix in COPIED: shutil.copy2(path, destination)
                else: os.link(path, destination)


def peak_of(command: list[str]) -> tuple[float, float, str]:
    "Wall seconds, the child's peak resident MiB, and its stdout, for one fresh process."
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0: raise RuntimeError(done.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before: raise RuntimeError("the child's peak did not exceed an earlier child's: run repeats apart")
    return seconds, peak / 1024, done.stdout


def isolated(command: list[str]) -> tuple[float, float, str]:
    "`peak_of` in a fresh wrapper process, so each measurement's peak is its own (RUSAGE_CHILDREN keeps the maximum)."
    code = f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); import export_many as bench; " \
           f"print(json.dumps(bench.peak_of({command!r})))"
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def cpu_name() -> str:
    "The CPU's model name (Linux), else the machine type."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", help="folder for the synthetic movies (default: a temporary one, removed)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "export_many.json"))
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="export-many-"))
    demo = demo_run(work)
    root = work / "movies"
    started = time.perf_counter()
    synthetic_movies(demo, root, args.movies)
    made_s = time.perf_counter() - started
    merge = [sys.executable, "-m", "dreamframe.cli", "export-many", str(root), "--quiet"]
    imports = [sys.executable, "-c", "import dreamframe.cli, dreamframe.export_many, dreamframe.pipeline"]
    runs = [isolated(merge) for _ in range(args.repeats)]
    baseline = [isolated(imports) for _ in range(args.repeats)]
    summary = json.loads((root / "export" / "summary.json").read_text())
    seconds = [run[0] for run in runs]
    import datasets, dreamframe, pydantic
    result = {
        "what": "dreamframe export-many over synthetic finished movies (copies of one demo run), fresh process per repeat",
        "command": " ".join(["python bench/export_many.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "load_average_at_start": os.getloadavg()},
        "versions": {"python": platform.python_version(), "dreamframe": dreamframe.__version__,
                     "pydantic": pydantic.__version__, "datasets (not used by the merge)": datasets.__version__},
        "movies": args.movies, "made_in_s": round(made_s, 1), "records": summary["records"],
        "qa_items_per_movie": summary["records"]["qa.jsonl"] // args.movies, "hours_of_video": round(summary["hours"], 2),
        "merge_s": [round(s, 2) for s in seconds], "merge_s_median": round(statistics.median(seconds), 2),
        "peak_rss_mib": [round(run[1], 1) for run in runs],
        "peak_rss_mib_import_only": [round(run[1], 1) for run in baseline],
        "import_only_s": [round(run[0], 2) for run in baseline],
        "printed": runs[-1][2].strip().splitlines(),
    }
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: result[k] for k in ("merge_s", "peak_rss_mib", "peak_rss_mib_import_only")}))
    if not args.work: shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
