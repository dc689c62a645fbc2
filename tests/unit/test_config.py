"""Config loading: merge order, path resolution, errors that name file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import ConfigError, load_config, redact_uri

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = "source:\n  uri: video.avi\nmodel:\n  path: model.onnx\n"


def test_relative_paths_resolve_next_to_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path / "edged.yaml", BASE)).config
    assert config.sources[0].uri == str(tmp_path / "video.avi")
    assert config.model.path == tmp_path / "model.onnx"
    assert config.sources[0].kind == "file"


def test_conf_d_files_merge_in_name_order(tmp_path: Path) -> None:
    main = _write(tmp_path / "edged.yaml", BASE + "detect:\n  conf: 0.4\n  iou: 0.5\n")
    _write(tmp_path / "conf.d" / "20-late.yaml", "detect:\n  conf: 0.7\n")
    _write(tmp_path / "conf.d" / "10-early.yaml", "detect:\n  conf: 0.6\n")
    loaded = load_config(main)
    assert loaded.config.detect.conf == 0.7
    assert loaded.config.detect.iou == 0.5  # untouched keys survive a partial override
    assert [f.name for f in loaded.files] == ["edged.yaml", "10-early.yaml", "20-late.yaml"]


def test_unknown_key_names_file_key_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "edged.yaml", BASE + "detect:\n  conf: 0.5\n  cnof: 0.3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:7: detect.cnof: unknown key" in message
    assert "\n" not in message


def test_wrong_type_in_a_conf_d_file_names_that_file(tmp_path: Path) -> None:
    main = _write(tmp_path / "edged.yaml", BASE)
    extra = _write(tmp_path / "conf.d" / "50-x.yaml", "store:\n  retention_days: lots\n")
    with pytest.raises(ConfigError, match=rf"{extra}:2: store.retention_days: .*'lots'"):
        load_config(main)


def test_out_of_bounds_and_missing_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"detect.conf: .*less than or equal to 1"):
        load_config(_write(tmp_path / "a.yaml", BASE + "detect:\n  conf: 3\n"))
    with pytest.raises(ConfigError, match=r"model: required key is missing"):
        load_config(_write(tmp_path / "b.yaml", "source:\n  uri: x.avi\n"))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "edged.yaml", BASE + "detect: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: .*fix the YAML syntax"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_lossless_needs_a_file_source(tmp_path: Path) -> None:
    text = "source:\n  uri: rtsp://cam/1\n  mode: lossless\nmodel:\n  path: m.onnx\n"
    with pytest.raises(ConfigError, match="lossless"):
        load_config(_write(tmp_path / "edged.yaml", text))


def test_shipped_configs_are_valid() -> None:
    assert load_config(ROOT / "etc" / "edged" / "edged.yaml").config.sources[0].kind == "camera"
    dev = load_config(ROOT / "dev" / "edged.yaml").config
    assert dev.sources[0].loop and dev.sources[0].mode == "paced"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream", "rtsp://admin:***@10.0.0.5:554/stream"),
        ("rtsp://admin:p@ss@cam/x", "rtsp://admin:***@cam/x"),
        ("http://cam.local/mjpg", "http://cam.local/mjpg"),
        ("/dev/video0", "/dev/video0"),
    ],
)
def test_credentials_are_redacted(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_several_sources_with_an_roi(tmp_path: Path) -> None:
    text = ("sources:\n  - uri: a.avi\n    name: a\n  - uri: rtsp://cam/2\n    name: b\n"
            "    roi: [[0, 0], [100, 0], [100, 100]]\nmodel:\n  path: m.onnx\n")
    config = load_config(_write(tmp_path / "edged.yaml", text)).config
    assert [s.name for s in config.sources] == ["a", "b"]
    assert config.sources[0].uri == str(tmp_path / "a.avi")
    assert config.sources[1].roi == [(0, 0), (100, 0), (100, 100)]


def test_source_errors_point_at_the_source_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "edged.yaml", BASE.replace("uri: video.avi", "uri: v.avi\n  fps: -1"))
    with pytest.raises(ConfigError, match=rf"{path}:3: sources.0.fps"):
        load_config(path)
    dup = "sources:\n  - uri: a.avi\n  - uri: b.avi\nmodel:\n  path: m.onnx\n"
    with pytest.raises(ConfigError, match="unique"):
        load_config(_write(tmp_path / "dup.yaml", dup))
