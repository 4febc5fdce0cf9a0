"""The sampler: deduplication, exclusions, torn lines, gzip, determinism, uniformity, and
bounded memory on a 1,000,000-line log."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import pytest
from scipy import stats

from vllm_canary.cli import main
from vllm_canary.dataloop import logs, sampler

DAY = date(2026, 11, 24)


def rec(prompt: str | None = None, **kw: object) -> dict[str, object]:
    r: dict[str, object] = {"ts": "2026-11-24T10:00:00+00:00", "request_id": "cmpl-1",
                            "version": "v1", "endpoint": "/v1/completions", "status": 200,
                            "error": None, "opt_out": False, "params": {"max_tokens": 8},
                            "completion": "x"}
    if prompt is not None:
        r["prompt"] = prompt
    r.update(kw)
    return r


def select(records: list[dict[str, object]], n: int, seed: int = 0) -> list[sampler.Picked]:
    return sampler.select(iter(records), n, seed, logs.ReadStats())


def test_normalised_duplicates_count_once() -> None:
    records = [rec("Hello  World"), rec(" hello world\n"), rec("HELLO WORLD"), rec("other")]
    picked = select(records, 10)
    assert sorted(p.key for p in picked) == ["hello world", "other"]


def test_failed_opted_out_and_empty_requests_are_excluded_and_counted() -> None:
    st = logs.ReadStats()
    records = [rec("ok"), rec(opt_out=True), rec("e", status=500, error="boom"), rec("   "),
               rec("t", status=200, error="timeout"), rec(messages=[]), rec("s", status=429)]
    picked = sampler.select(iter(records), 10, 0, st)
    assert [p.key for p in picked] == ["ok"]
    assert st.excluded == {"opted_out": 1, "failed": 3, "empty": 2}


def test_chat_messages_are_prompts_too() -> None:
    msgs = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    picked = select([rec(messages=msgs, endpoint="/v1/chat/completions")], 5)
    req = sampler.request_of(picked[0].record)
    assert req["endpoint"] == "/v1/chat/completions" and req["messages"] == msgs
    assert req["params"]["n"] == 1 and req["params"]["stream"] is False


def test_same_seed_same_sample_and_larger_n_is_superset() -> None:
    records = [rec(f"prompt {i}") for i in range(500)]
    a = [p.key for p in select(records, 20, seed=1)]
    assert a == [p.key for p in select(records, 20, seed=1)]
    assert a != [p.key for p in select(records, 20, seed=2)]
    assert set(a) <= {p.key for p in select(records, 40, seed=1)}
    # Order of the input does not matter either.
    assert a == [p.key for p in select(records[::-1], 20, seed=1)]


def test_sample_ids_are_stable_per_prompt_and_day() -> None:
    k = sampler.prompt_key(rec("Some Prompt"))
    assert k is not None
    assert sampler.sample_id(DAY, k) == sampler.sample_id(DAY, "some prompt")
    assert sampler.sample_id(DAY, k) != sampler.sample_id(date(2026, 11, 25), k)


def test_uniform_over_positions_chi_square() -> None:
    # 1000 distinct prompts, 10 picked per seed, 600 seeds: every position equally likely.
    records = [rec(f"question {i}") for i in range(1000)]
    index = {f"question {i}": i for i in range(1000)}
    buckets = [0] * 20
    for seed in range(600):
        for p in select(records, 10, seed):
            buckets[index[p.key] // 50] += 1
    assert sum(buckets) == 6000
    assert stats.chisquare(buckets).pvalue > 0.001


def test_torn_and_invalid_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    good = [json.dumps(rec(f"p{i}")) for i in range(5)]
    plain = tmp_path / "requests-20261124-v1-a.jsonl"
    plain.write_text("\n".join([*good[:3], "not json", "[1, 2]", good[3]]) + "\n" + good[4][:30])
    gz = tmp_path / "requests-20261124-v2-a.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(json.dumps(rec("zipped")) + "\n")
    (tmp_path / "requests-20261123-v1-a.jsonl").write_text(json.dumps(rec("yesterday")) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    files = logs.day_files(tmp_path, DAY)
    assert [f.name for f in files] == [plain.name, gz.name]
    st = logs.ReadStats()
    picked = sampler.select(logs.read_records(files, st), 100, 0, st)
    assert sorted(p.key for p in picked) == ["p0", "p1", "p2", "p3", "zipped"]
    assert (st.files, st.lines, st.invalid) == (2, 8, 3)


def test_truncated_gzip_keeps_what_was_readable(tmp_path: Path) -> None:
    gz = tmp_path / "requests-20261124-v1-a.jsonl.gz"
    body = gzip.compress(("\n".join(json.dumps(rec(f"p{i}")) for i in range(200)) + "\n").encode())
    gz.write_bytes(body[: len(body) // 2])
    st = logs.ReadStats()
    records = list(logs.read_records([gz], st))
    assert 0 < len(records) < 200 and st.invalid >= 1


def test_one_million_lines_bounded_memory(tmp_path: Path) -> None:
    """Stream a 1,000,000-line day through the sampler in a fresh interpreter and check its
    peak RSS: it must not grow with the log (the file itself is ~200 MB)."""
    log = tmp_path / "requests-20261124-v1-a.jsonl"
    line = ('{"ts":"2026-11-24T10:00:00+00:00","request_id":"cmpl-%d","version":"v1",'
            '"endpoint":"/v1/completions","status":200,"error":null,"opt_out":false,'
            '"prompt":"question %d about the weather in city %d","params":{"max_tokens":16},'
            '"completion":"%s"}\n')
    pad = "word " * 20
    with open(log, "w") as fh:
        for i in range(1_000_000):
            fh.write(line % (i, i % 300_000, i % 977, pad))
        fh.write('{"torn": ')
    script = textwrap.dedent(f"""
        import json
        from datetime import date
        from pathlib import Path
        from vllm_canary.dataloop import logs, sampler

        def peak_rss_mb():  # VmHWM: this process's own peak (ru_maxrss counts the parent's)
            for row in open("/proc/self/status"):
                if row.startswith("VmHWM:"):
                    return int(row.split()[1]) / 1024

        st = logs.ReadStats()
        files = logs.day_files(Path({str(tmp_path)!r}), date(2026, 11, 24))
        picked = sampler.select(logs.read_records(files, st), 100, 0, st)
        print(json.dumps({{"picked": len(picked), "distinct": len({{p.key for p in picked}}),
                          "lines": st.lines, "invalid": st.invalid,
                          "rss_mb": peak_rss_mb()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["picked"] == result["distinct"] == 100
    assert result["lines"] == 1_000_001 and result["invalid"] == 1
    assert result["rss_mb"] < 150



@pytest.mark.parametrize("extra", [["--n", "0"], ["--retries", "-1"], ["--timeout", "0"],
                                   ["--concurrency", "0"], ["--date", "2026-13-01"]])
def test_bad_sample_flags_are_one_line_errors(tmp_path: Path, capsys, extra: list[str]) -> None:
    # --retries -1 used to ask nothing and write empty answers counted as successes.
    code = main(["sample", "--logs", str(tmp_path), "--v1", "http://127.0.0.1:1",
                 "--v2", "http://127.0.0.1:1", "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("vllm-canary sample: error:"), err
    assert not (tmp_path / "out").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    code = main(["sample", "--logs", str(tmp_path), "--v1", "http://127.0.0.1:1",
                 "--v2", "http://127.0.0.1:1", "--out", str(tmp_path / "file" / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"vllm-canary sample: error: cannot create the --out folder "
                                 f"{tmp_path / 'file' / 'out'}: Not a directory"], err


def test_a_version_url_without_a_scheme_is_refused_before_any_work(tmp_path: Path,
                                                                    capsys) -> None:
    # `--v1 127.0.0.1:8101` used to run and record every answer as failed, exit 0.
    code = main(["sample", "--logs", str(tmp_path), "--v1", "127.0.0.1:8101",
                 "--v2", "http://127.0.0.1:1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--v1 '127.0.0.1:8101' is not an http(s) URL" in err[0]
    assert not (tmp_path / "out").exists()
