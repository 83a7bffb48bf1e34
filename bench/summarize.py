#!/usr/bin/python3
"""Prints the markdown summary of a bench/run_all.sh output directory.

Reads ours-t{T}-r{R}.json (forward_bench, Google Benchmark JSON), ref-t{T}-r{R}.json
(hf_reference.py bench, one JSON line), their .meta.json (measure.py) and rss-*.json
(load_rss_bench load). Figures per thread count are medians over rounds.
"""
import glob, json, os, re, statistics, sys


def load(path):
    with open(path) as f:
        return json.load(f)


def meta(path):
    p = path + ".meta.json"
    return load(p) if os.path.exists(p) else {}


def main(out):
    rows = {}  # threads -> list of per-round dicts
    for path in sorted(glob.glob(os.path.join(out, "ours-t*-r*.json"))):
        if path.endswith(".meta.json"):
            continue
        t, r = map(int, re.search(r"ours-t(\d+)-r(\d+)\.json$", path).groups())
        ours = {b["name"].split("/")[0]: b for b in load(path)["benchmarks"]}
        ref_path = os.path.join(out, f"ref-t{t}-r{r}.json")
        ref = load(ref_path) if os.path.exists(ref_path) else None
        fwd, hook, last, paired = (ours.get(n) for n in
                                   ("BM_Forward", "BM_ForwardOneCachedHookPerLayer",
                                    "BM_ForwardLastPositionOnly", "BM_HookOverheadPaired"))
        row = {"round": r, "ours": fwd["tokens/s"], "hook": hook["tokens/s"], "last": last["tokens/s"],
               "hook_overhead": hook["real_time"] / fwd["real_time"] - 1,
               "paired_overhead": paired["hook_overhead_pct"] / 100 if paired else float("nan"),
               "last_speedup": fwd["real_time"] / last["real_time"],
               "ref": ref["tokens_per_s"] if ref else float("nan"),
               "other": max(meta(path).get("other_cpu_frac", 0), meta(ref_path).get("other_cpu_frac", 0))}
        row["ratio"] = row["ours"] / row["ref"]
        rows.setdefault(t, []).append(row)

    med = lambda xs: statistics.median(xs)
    print("| threads | ours tokens/s (full logits) | reference tokens/s | ours / reference "
          "| cached hook/layer tokens/s | hook overhead, paired | hook overhead, separate runs "
          "| last-position tokens/s | last-position speed-up | rounds | max other-CPU during runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in sorted(rows):
        rs = rows[t]
        print(f"| {t} | {med([x['ours'] for x in rs]):.0f} | {med([x['ref'] for x in rs]):.0f} "
              f"| {med([x['ratio'] for x in rs]):.3f} | {med([x['hook'] for x in rs]):.0f} "
              f"| {100 * med([x['paired_overhead'] for x in rs]):+.1f}% "
              f"| {100 * med([x['hook_overhead'] for x in rs]):+.1f}% | {med([x['last'] for x in rs]):.0f} "
              f"| {med([x['last_speedup'] for x in rs]):.2f}x | {len(rs)} "
              f"| {100 * max(x['other'] for x in rs):.1f}% |")
    if any(len(rs) > 1 for rs in rows.values()):
        print("\nPer round:\n")
        print("| threads | round | ours | reference | ours/ref | hook overhead, paired "
              "| hook overhead, separate | last-pos speed-up | other-CPU |")
        print("|---|---|---|---|---|---|---|---|---|")
        for t in sorted(rows):
            for x in rows[t]:
                print(f"| {t} | {x['round']} | {x['ours']:.0f} | {x['ref']:.0f} | {x['ratio']:.3f} "
                      f"| {100 * x['paired_overhead']:+.1f}% | {100 * x['hook_overhead']:+.1f}% | {x['last_speedup']:.2f}x | {100 * x['other']:.1f}% |")

    rss = sorted(p for p in glob.glob(os.path.join(out, "rss-*.json")) if not p.endswith(".meta.json"))
    if rss:
        print("\n| load dtype | weight bytes | RSS before | peak RSS (VmHWM) | peak increase | ratio "
              "| RSS after | new high-water mark | load s |")
        print("|---|---|---|---|---|---|---|---|---|")
        mib = lambda b: f"{b / 2**20:.0f} MiB"
        for path in rss:
            x = load(path)
            print(f"| {x['dtype']} | {mib(x['weight_bytes'])} | {mib(x['rss_before'])} | {mib(x['peak_rss'])} "
                  f"| {mib(x['peak_increase'])} | {x['ratio']:.3f} | {mib(x['rss_after'])} "
                  f"| {x['new_high_water_mark']} | {x['load_seconds']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
