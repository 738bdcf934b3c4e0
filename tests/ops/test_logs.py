"""The primary's log sink: timestamps and worker ids, JSON lines, files apart, reopen after a
move, size rotation, --log-config in JSON, TOML and INI, and one-line errors."""
import json
import logging
import os
import re

import pytest

from pyclusterc._lowlevel.options import OptionError
from pyclusterc.manager.logs import OPTIONS, LogConfigError, LogSink

pytestmark = pytest.mark.timeout(30)

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


@pytest.fixture
def sinks():
    made = []

    def make(**kw):
        sink = LogSink.from_options(kw.pop("settings", {}), **kw)
        made.append(sink)
        return sink
    yield make
    for sink in made:
        sink.close()


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_text_to_the_primary_streams_with_time_and_worker_id(tmp_path, sinks):
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        sink = sinks(stdout=out.fileno(), stderr=err.fileno())
        sink.worker_line(3, "stdout", b"hello 100%\n")
        sink.worker_line(0, "stderr", b"Traceback \xff\r\n")
        sink.primary_line("info", "pyclusterc: ready, 2 workers listening")
        sink.primary_line("error", "pyclusterc: error: boom")
        sink.close()
    out_lines, err_lines = read(out_path), read(err_path)
    assert re.fullmatch(STAMP + r" \[3\] hello 100%", out_lines[0]), out_lines
    assert re.fullmatch(STAMP + r" \[primary\] pyclusterc: ready, 2 workers listening", out_lines[1])
    assert len(out_lines) == 2
    assert err_lines[0].endswith("[0] Traceback \ufffd") and err_lines[1].endswith("[primary] pyclusterc: error: boom")


def test_json_lines_and_no_time(tmp_path, sinks):
    path = tmp_path / "all.log"
    sink = sinks(settings={"log_file": str(path), "log_format": "json"})
    sink.worker_line(1, "stdout", "GET / 200")
    sink.worker_line(1, "stderr", 'a "quoted" ünïcode line')
    sink.primary_line("warning", "slow")
    records = [json.loads(line) for line in read(path)]
    assert [(r["worker"], r["stream"], r["level"], r["message"]) for r in records] == [
        (1, "stdout", "info", "GET / 200"), (1, "stderr", "info", 'a "quoted" ünïcode line'),
        ("primary", "primary", "warning", "slow")]
    assert all(re.fullmatch(STAMP, r["time"]) for r in records)
    plain = tmp_path / "plain.log"
    sinks(settings={"log_file": str(plain), "log_time": False}).worker_line(2, "stdout", b"x")
    assert read(plain) == ["[2] x"]


def test_files_apart_and_reopen_after_a_move(tmp_path, sinks):
    out, err = tmp_path / "app-out.log", tmp_path / "app-error.log"
    sink = sinks(settings={"log_file": str(out), "error_log_file": str(err)})
    sink.worker_line(0, "stdout", b"before")
    sink.worker_line(0, "stderr", b"oops")
    os.rename(out, tmp_path / "app-out.log.1")   # what logrotate does, then USR1
    sink.worker_line(0, "stdout", b"still old")  # until reopen, the moved file gets it
    sink.reopen()
    sink.worker_line(0, "stdout", b"after")
    assert [l.split(" ", 1)[1] for l in read(tmp_path / "app-out.log.1")] == ["[0] before", "[0] still old"]
    assert [l.split(" ", 1)[1] for l in read(out)] == ["[0] after"]
    assert [l.split(" ", 1)[1] for l in read(err)] == ["[0] oops"]


def test_reopen_without_files_is_harmless(sinks, capfd):
    sink = sinks()
    sink.reopen()
    sink.worker_line(5, "stdout", b"alive")
    sink.close()
    assert capfd.readouterr().out.endswith("[5] alive\n")


def test_size_rotation_keeps_backups(tmp_path, sinks):
    path = tmp_path / "big.log"
    sink = sinks(settings={"log_file": str(path), "log_max_size": "1K", "log_backups": 2})
    for i in range(200):
        sink.worker_line(0, "stdout", f"line {i:04d} " + "x" * 40)
    names = sorted(os.listdir(tmp_path))
    assert names == ["big.log", "big.log.1", "big.log.2"]
    assert all(os.path.getsize(tmp_path / n) <= 1024 for n in names)
    assert read(path)[-1].endswith("line 0199 " + "x" * 40)


@pytest.mark.parametrize("kind", ["json", "toml", "ini"])
def test_log_config_files(tmp_path, sinks, kind):
    out = tmp_path / f"configured-{kind}.log"
    fmt = "%(levelname)s %(worker)s %(stream)s %(message)s"
    if kind == "json":
        config = tmp_path / "log.json"
        config.write_text(json.dumps({
            "version": 1, "formatters": {"f": {"format": fmt}},
            "handlers": {"h": {"class": "logging.FileHandler", "filename": str(out), "formatter": "f"}},
            "loggers": {"pyclusterc": {"handlers": ["h"], "level": "INFO", "propagate": False}}}))
    elif kind == "toml":
        config = tmp_path / "log.toml"
        config.write_text(f"""version = 1
[formatters.f]
format = "{fmt}"
[handlers.h]
class = "logging.FileHandler"
filename = "{out}"
formatter = "f"
[loggers.pyclusterc]
handlers = ["h"]
level = "INFO"
propagate = false
""")
    else:
        config = tmp_path / "log.ini"
        config.write_text(f"""[loggers]
keys = root,pyclusterc
[handlers]
keys = h
[formatters]
keys = f
[logger_root]
handlers =
[logger_pyclusterc]
handlers = h
level = INFO
qualname = pyclusterc
propagate = 0
[handler_h]
class = FileHandler
args = ({str(out)!r},)
formatter = f
[formatter_f]
format = {fmt}
""")
    try:
        sink = sinks(settings={"log_config": str(config)})
        sink.worker_line(4, "stderr", b"from the worker")
        sink.primary_line("info", "from the primary")
        moved = tmp_path / "moved.log"
        os.rename(out, moved)
        sink.reopen()  # handlers the config made are reopened too
        sink.worker_line(4, "stdout", b"after reopen")
        assert read(moved) == ["INFO 4 stderr from the worker", "INFO primary primary from the primary"]
        assert read(out) == ["INFO 4 stdout after reopen"]
        assert logging.getLogger().handlers == [] or kind != "ini"  # fileConfig root without handlers
    finally:
        for handler in logging.getLogger("pyclusterc").handlers[:]:
            logging.getLogger("pyclusterc").removeHandler(handler)
            handler.close()


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(LogConfigError, match=r"invalid --log-config .*: use a \.json, \.toml"):
        LogSink(log_config=str(tmp_path / "x.yaml"))
    with pytest.raises(LogConfigError, match="no such file"):
        LogSink(log_config=str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}')
    with pytest.raises(LogConfigError) as e:
        LogSink(log_config=str(broken))
    assert "\n" not in str(e.value) and "broken.json" in str(e.value)
    with pytest.raises(LogConfigError, match="cannot open log file"):
        LogSink(log_file=str(tmp_path / "no" / "dir" / "x.log"))
    options = {o.name: o for o in OPTIONS}
    assert options["log_max_size"].convert("10M") == 10 << 20
    with pytest.raises(OptionError, match="'xml'.*use one of text, json"):
        options["log_format"].convert("xml")
    assert options["log_time"].negatable and options["log_time"].default is True


@pytest.mark.parametrize("settings", [{}, {"log_time": False}, {"log_format": "json"}, {"log_max_size": "1M"}],
                         ids=["text", "no-time", "json", "rotating"])
@pytest.mark.parametrize("lines", [[b"GET / 200", b"caf\xc3\xa9 \xff", b"trailing\r", b"", b"last"],
                                   [b'127.0.0.1 - "GET /?a=1 HTTP/1.1" 200', b"", b"plain ascii", b"last"]],
                         ids=["decoded", "ascii-as-bytes"])
def test_a_batch_of_worker_lines_reads_as_the_same_lines_one_by_one(tmp_path, sinks, settings, lines):
    """worker_chunk (the relay's batched path, direct for plain text; an ASCII batch is
    stamped as bytes) writes exactly what worker_line writes for each line."""
    settings = {**settings, "log_file": str(tmp_path / "batch.log")}
    one = {**settings, "log_file": str(tmp_path / "one.log")}
    batch = sinks(settings=settings)
    batch.worker_chunk(2, "stdout", b"\n".join(lines))
    batch.close()
    single = sinks(settings=one)
    for line in lines:
        single.worker_line(2, "stdout", line)
    single.close()

    def normal(text):  # times differ between the two
        return re.sub(STAMP, "T", text)
    assert [normal(x) for x in read(tmp_path / "batch.log")] == [normal(x) for x in read(tmp_path / "one.log")]
    assert len(read(tmp_path / "batch.log")) == len(lines)
