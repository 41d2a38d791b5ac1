import json
import textwrap
from pathlib import Path

import pytest
import yaml

from segstream.connectors.errors import ConfigError
from segstream.models.presets import SYNTHETIC_TINY
from segstream.pipeline.cli import main
from segstream.pipeline.config import FileSourceConfig, SyntheticSourceConfig, load_config
from tests.conftest import unlocated

VALID = """
sources:
  - name: cam0
    type: file
    path: {clip}
  - name: synth
    type: synthetic
    num_frames: 10
sinks:
  redis:
    url: redis://localhost:6379/0
    password: ${{SEGSTREAM_TEST_PW:-secret}}
"""


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "pipeline.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def errors_of(capsys, argv) -> list[str]:
    """Run the CLI expecting exit 2; the error lines it printed, without prefix."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("segstream: error: ") for line in lines)
    return [unlocated(line.removeprefix("segstream: error: ")) for line in lines]


def test_valid_config_validates(capsys, write, clip, monkeypatch):
    monkeypatch.delenv("SEGSTREAM_TEST_PW", raising=False)
    assert main(["validate", write(VALID.format(clip=clip))]) == 0
    assert capsys.readouterr().out.strip() == "ok: 2 sources, model synthetic_eomt_tiny_256"


@pytest.mark.parametrize("override, expected", [
    ("model.preset=no_such_preset", "model.preset: unknown preset 'no_such_preset'"),
    ("model.family=no_such_family", "model.family: unknown family 'no_such_family'"),
    ("model.task=instance", "model.task: preset synthetic_eomt_tiny_256 is a panoptic model"),
    # found probing: validate said ok, run failed
    ("model.preset=ade20k_senatra_tiny_512 model.task=semantic",
     "model.checkpoint: preset ade20k_senatra_tiny_512 has no published weights"),
])
def test_validate_refuses_a_model_the_run_would_refuse(capsys, write, clip, override, expected):
    sets = [arg for item in override.split() for arg in ("--set", item)]
    (line,) = errors_of(capsys, ["validate", write(VALID.format(clip=clip)), *sets])
    assert line.startswith(expected)


def test_validate_and_run_refuse_tracker_weights_that_leave_nothing_but_embeddings(capsys, write, clip):
    # found probing: validate said ok, run showed the tracker's ValueError in a traceback
    sets = ["--set", "tracking.iou_weight=0", "--set", "tracking.class_weight=0"]
    for command in ("validate", "run"):
        (line,) = errors_of(capsys, [command, write(VALID.format(clip=clip)), *sets])
        assert line.startswith("tracking: iou_weight and class_weight are both 0"), line


def test_validate_and_run_list_the_model_s_mistake_with_the_others(capsys, write, clip):
    # found re-checking: an unknown preset was named only once every other error was fixed
    sets = ["--set", "model.preset=no_such_preset", "--set", "engine.batch_size=0"]
    for command in ("validate", "run"):
        lines = errors_of(capsys, [command, write(VALID.format(clip=clip)), *sets])
        assert [line.split(":")[0] for line in lines] == ["engine.batch_size", "model.preset"], lines


def test_validate_lists_a_name_clash_and_a_misspelt_preset_beside_field_errors(capsys, write, clip):
    # found probing: a duplicate name and an unknown preset each waited for the other errors' fixes
    path = write(VALID.format(clip=clip).replace("name: synth", "name: cam0"))
    sets = ["--set", "model.preset=coco_panoptic_eomt_larg_640", "--set", "model.task=panoptik",
            "--set", "sources.1.type=fiel"]
    lines = errors_of(capsys, ["validate", path, *sets])
    assert [line.split(":")[0] for line in lines] == ["sources[1].type (source cam0)", "model.task", "sources",
                                                      "model.preset"], lines
    assert "source name 'cam0' is used by sources[0] and sources[1]" in lines[2]
    assert "did you mean coco_panoptic_eomt_large_640?" in lines[3]


def test_validate_names_the_model_that_model_family_alone_picks(capsys, write, clip):
    assert main(["validate", write(VALID.format(clip=clip)), "--set", "model.family=senatra"]) == 0
    assert capsys.readouterr().out.strip() == "ok: 2 sources, model synthetic_senatra_tiny_192"


def test_model_preset_null_means_the_family_s_default_in_yaml_and_in_set(capsys, write, clip, tmp_path):
    # found probing: --set model.preset=null gave rc 2 "model.preset: Input should be a valid string (got None)"
    config = tmp_path / "family.yaml"
    config.write_text(f"sources: [{{name: cam0, type: file, path: '{clip}'}}]\nmodel: {{family: senatra, preset: null}}\n")
    assert main(["validate", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "ok: 1 source, model synthetic_senatra_tiny_192"
    assert main(["validate", write(VALID.format(clip=clip)), "--set", "model.preset=null"]) == 0
    assert capsys.readouterr().out.strip() == "ok: 2 sources, model synthetic_eomt_tiny_256"
    assert main(["validate", write(VALID.format(clip=clip)), "--set", "model.family=senatra",
                 "--set", "model.preset=null"]) == 0
    assert capsys.readouterr().out.strip() == "ok: 2 sources, model synthetic_senatra_tiny_192"
    assert load_config(config).model.preset == "synthetic_eomt_tiny_256"  # the schema's default, as when left out


# pipeline.yaml is the container's: its paths exist in the image (tests/test_compose.py checks it)
@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if p.name != "pipeline.yaml")
)
def test_every_shipped_config_validates(capsys, monkeypatch, tmp_path, name):
    for variable in ("SEGSTREAM_REDIS_URL", "CAM_PASSWORD", "LOBBY_PASSWORD", "FIELD_SRT_PASSPHRASE"):  # what they ask for
        monkeypatch.setenv(variable, "redis://localhost:6379/0" if "URL" in variable else "passw0rd-of-16ch")
    (tmp_path / "0001.png").write_bytes(b"")  # a folder with an image (validate lists, it does not decode)
    monkeypatch.setenv("SEGSTREAM_IMAGES", str(tmp_path))
    assert main(["validate", str(Path(__file__).parents[1] / "configs" / name)]) == 0
    out = capsys.readouterr().out
    # batch.yaml has no sources: its videos come from `segstream batch INPUTS`
    assert out.startswith("ok: a batch config" if name == "batch.yaml" else "ok: ")
    assert (name == "batch.yaml") == ("batch config" in out)


def test_defaults_live_in_the_schema(write, clip):
    cfg = load_config(write(VALID.format(clip=clip)))
    assert isinstance(cfg.sources[0], FileSourceConfig) and isinstance(cfg.sources[1], SyntheticSourceConfig)
    assert cfg.sources[0].queue_size == 8 and cfg.sources[0].realtime is False
    assert cfg.model.preset == SYNTHETIC_TINY.name and cfg.model.task is None and cfg.engine.batch_size == 4
    assert cfg.sinks.redis.stream == "segstream:{source}:frames" and cfg.sinks.files.enabled is False


def test_unknown_key_names_its_path(capsys, write, clip):
    text = VALID.format(clip=clip) + "engine:\n  bach_size: 8\n"
    assert errors_of(capsys, ["validate", write(text)]) == ["engine.bach_size: unknown key — did you mean 'batch_size'?"]


def test_unknown_key_in_a_source_uses_the_yaml_path(capsys, write, clip):
    text = VALID.format(clip=clip).replace("num_frames: 10", "num_frames: 10\n    colour: red")
    [line] = errors_of(capsys, ["validate", write(text)])
    # with several sources, the line names the source too
    assert line.startswith("sources[1].colour (source synth): unknown key — allowed here: name, type, width")


def test_every_error_is_reported_on_its_own_line(capsys, write, clip):
    text = VALID.format(clip=clip) + (
        "engine:\n  batch_size: many\n  max_wait_ms: -1\nmodel:\n  precision: fp8\n  postprocess: slow\n"
    )
    lines = errors_of(capsys, ["validate", write(text)])
    assert len(lines) == 4
    assert lines[0].startswith("model.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'")
    assert lines[1].startswith("model.postprocess: Input should be 'fast' or 'exact'")
    assert lines[2].startswith("engine.batch_size: Input should be a valid integer") and "'many'" in lines[2]
    assert lines[3].startswith("engine.max_wait_ms: Input should be greater than or equal to 0")


def test_missing_video_file(capsys, write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [line] = errors_of(capsys, ["validate", write(VALID.format(clip="videos/x.mp4"))])
    assert line.startswith("sources[0].path (source cam0): file 'videos/x.mp4' does not exist")


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch, clip):
    folder = tmp_path / "deploy"
    (folder / "media").mkdir(parents=True)
    (folder / "media" / "cam.mp4").write_bytes(Path(clip).read_bytes())
    config = folder / "pipeline.yaml"
    config.write_text(VALID.format(clip="media/cam.mp4"))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(config)
    assert cfg.sources[0].path == str((folder / "media" / "cam.mp4").resolve())


def test_bad_redis_url(capsys, write, clip):
    text = VALID.format(clip=clip).replace("redis://localhost:6379/0", "http://localhost:6379")
    [line] = errors_of(capsys, ["validate", write(text)])
    assert line.startswith("sinks.redis.url: 'http://localhost:6379' is not a Redis URL — use redis://")


@pytest.mark.parametrize("url", [
    "redis://user:Secr/etPw@localhost:6379/0",  # unescaped / # ? end urllib's user info early
    "redis://:Secr#etPw@localhost:6379/0",
    "redis://localhost:port?password=SecretPw",  # redis-py reads a password from the query
])
def test_a_bad_redis_url_never_shows_its_password(capsys, write, clip, url):
    text = VALID.format(clip=clip).replace("redis://localhost:6379/0", url)
    [line] = errors_of(capsys, ["validate", write(text)])
    assert "invalid port" in line and "***" in line
    assert "Secr" not in line and "etPw" not in line and "SecretPw" not in line, line


def test_a_sentinel_url_and_the_sentinels_own_login_are_taken(write, clip):
    text = VALID.format(clip=clip).replace("redis://localhost:6379/0", "redis+sentinel://s1,s2:26380/mymaster/1") + (
        "    sentinel: {password: sentinel-pw}\n")
    redis = load_config(write(text)).sinks.redis
    assert redis.url == "redis+sentinel://s1,s2:26380/mymaster/1" and redis.sentinel.password == "sentinel-pw"
    assert "sentinel-pw" not in repr(redis)


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://:Secr%2FetPw@s1:26379", "names no master: end it with /<master-name>"),
    ("redis+sentinel://:SecretPw@s1:26379,s2:port/mymaster", "lists 's2:port' as a sentinel"),
    ("rediss+sentinel://:SecretPw@s1/mymaster/zero", "where /<master-name>[/db] goes"),
])
def test_a_bad_sentinel_url_is_one_line_without_its_password(capsys, write, clip, url, says):
    text = VALID.format(clip=clip).replace("redis://localhost:6379/0", url)
    [line] = errors_of(capsys, ["validate", write(text)])
    assert line.startswith("sinks.redis.url: '") and says in line and "***" in line
    assert "Secr" not in line and "etPw" not in line, line


def test_the_sentinels_login_without_a_sentinel_url_is_refused(capsys, write, clip):
    text = VALID.format(clip=clip) + "    sentinel: {password: pw}\n"
    [line] = errors_of(capsys, ["validate", write(text)])
    assert "sentinel.username/password are set but the url is no redis+sentinel:// URL" in line


def test_unset_variable_names_variable_and_key(capsys, write, clip, monkeypatch):
    monkeypatch.delenv("SEGSTREAM_TEST_PW", raising=False)
    text = VALID.format(clip=clip).replace(":-secret", "")
    [line] = errors_of(capsys, ["validate", write(text)])
    assert line.startswith("sinks.redis.password: environment variable SEGSTREAM_TEST_PW is not set")


def test_an_unset_variable_does_not_hide_the_other_mistakes_and_is_said_once(capsys, write, monkeypatch):
    # found probing 16 cameras: 16 identical "CAMPW is not set" lines, and the real typos only
    # after the variable was set
    monkeypatch.delenv("SEGSTREAM_TEST_CAMPW", raising=False)
    cameras = "".join(f"  - {{name: cam{i}, type: stream, url: 'rtsp://admin:${{SEGSTREAM_TEST_CAMPW}}@10.0.0.{i}/live'}}\n"
                      for i in range(6))
    text = f"sources:\n{cameras}  - {{name: cam9, type: steam}}\n  - {{name: cam8, type: stream, url: 'rtsp://h/x', read_timout_s: 3}}\n"
    assert errors_of(capsys, ["validate", write(text)]) == [
        "sources[0].url (source cam0) and 5 more places: environment variable SEGSTREAM_TEST_CAMPW is not set — "
        "export it or write ${SEGSTREAM_TEST_CAMPW:-default}",
        "sources[6].type (source cam9): unknown source type 'steam' — use file, stream, camera, snapshot, images, "
        'synthetic, custom (README, "Cameras, streams and image folders")',
        "sources[7].read_timout_s (source cam8): unknown key — did you mean 'read_timeout_s'?",
    ]


def test_an_image_folder_left_empty_by_an_unset_variable_is_said_once(capsys, monkeypatch):
    # found probing the docs as written: configs/image_folder.yaml without SEGSTREAM_IMAGES said also
    # "no images in '<the config's folder>'", a folder the user never named
    monkeypatch.delenv("SEGSTREAM_IMAGES", raising=False)
    config = Path(__file__).resolve().parents[1] / "configs" / "image_folder.yaml"
    assert errors_of(capsys, ["validate", str(config)]) == [
        "sources[0].path: environment variable SEGSTREAM_IMAGES is not set — export it or write "
        "${SEGSTREAM_IMAGES:-default}"]


def test_a_source_type_named_as_other_tools_name_it_is_told_which_type_reads_it(capsys, write):
    # found probing as a home-lab NVR user: "type: rtsp" was refused with the list of types only
    text = "sources:\n  - {name: gate, type: RTSP, url: 'rtsp://h/x'}\n  - {name: desk, type: usb, device: 0}\n"
    assert errors_of(capsys, ["validate", write(text)]) == [
        "sources[0].type (source gate): unknown source type 'RTSP' — use type: stream "
        '(README, "Cameras, streams and image folders")',
        "sources[1].type (source desk): unknown source type 'usb' — use type: camera "
        '(README, "Cameras, streams and image folders")',
    ]


def test_yaml_anchors_and_merge_keys_share_settings_between_cameras(write, monkeypatch):
    # found probing: the duplicate-key loader refused YAML's merge key, and there was nowhere to put an anchor
    text = """
    x-camera: &camera {type: stream, transport: udp, read_timeout_s: 3, queue_size: 1}
    sources:
      - {<<: *camera, name: cam1, url: 'rtsp://10.0.0.1/live'}
      - {<<: *camera, name: cam2, url: 'rtsp://10.0.0.2/live', read_timeout_s: 7}
    """
    cfg = load_config(write(text))
    assert [(s.name, s.transport, s.read_timeout_s, s.queue_size) for s in cfg.sources] == [
        ("cam1", "udp", 3, 1), ("cam2", "udp", 7, 1)]
    with pytest.raises(Exception, match="key 'name' appears twice"):  # a key written twice is still refused
        load_config(write("sources:\n  - {name: a, name: b, type: synthetic}\n"))


def test_a_mistake_in_an_anchor_the_cameras_merge_is_said_once_naming_them(capsys, write):
    # found probing as a home-lab NVR user: a typo in the anchor was said four times, once a camera
    text = ("x-camera: &camera {type: stream, read_timout_s: 3}\nsources:\n"
            + "".join(f"  - {{<<: *camera, name: cam{i}, url: 'rtsp://h/{i}'}}\n" for i in range(4))
            + "  - {name: lone, type: stream, url: 'rtsp://h/9', read_timout_s: 3}\n")
    assert errors_of(capsys, ["validate", write(text)]) == [
        "sources[0].read_timout_s (source cam0, line 1; also sources cam1, cam2, cam3, from that line): unknown key "
        "— did you mean 'read_timeout_s'?",
        "sources[4].read_timout_s (source lone): unknown key — did you mean 'read_timeout_s'?",  # (its line: unlocated)
    ]


def test_variables_and_defaults_are_interpolated(write, clip, monkeypatch):
    monkeypatch.delenv("SEGSTREAM_TEST_PW", raising=False)
    monkeypatch.setenv("SEGSTREAM_TEST_BATCH", "16")
    text = VALID.format(clip=clip) + "engine:\n  batch_size: ${SEGSTREAM_TEST_BATCH}\n"
    cfg = load_config(write(text))
    assert cfg.sinks.redis.password == "secret" and cfg.engine.batch_size == 16
    monkeypatch.setenv("SEGSTREAM_TEST_PW", "from-env")
    assert load_config(write(text)).sinks.redis.password == "from-env"


def test_docker_compose_s_other_variable_forms_required_with_a_reason_and_unset_only_defaults(capsys, write,
                                                                                               monkeypatch):
    """Found probing a fleet's configs: ${VAR:?message} (docker-compose's "required") was refused
    as "not a variable reference"."""
    monkeypatch.delenv("SEGSTREAM_TEST_CAMPW", raising=False)
    monkeypatch.setenv("SEGSTREAM_TEST_EMPTY", "")
    text = ("sources:\n  - {name: cam, type: stream, url: 'rtsp://admin:${SEGSTREAM_TEST_CAMPW:?the lobby camera "
            "password}@10.0.0.1/live'}\n")
    assert errors_of(capsys, ["validate", write(text)]) == [
        "sources[0].url: environment variable SEGSTREAM_TEST_CAMPW is not set (the lobby camera "
        "password) — export it"]
    monkeypatch.setenv("SEGSTREAM_TEST_CAMPW", "")
    [line] = errors_of(capsys, ["validate", write(text)])
    assert "SEGSTREAM_TEST_CAMPW is empty (the lobby camera password)" in line
    monkeypatch.setenv("SEGSTREAM_TEST_CAMPW", "p@ss")
    assert load_config(write(text)).sources[0].url == "rtsp://admin:p%40ss@10.0.0.1/live"
    # ${VAR-default}: the default for an unset variable only; ${VAR?why}: an empty one is taken
    text = "sources:\n  - {name: 'a${SEGSTREAM_TEST_EMPTY-x}${SEGSTREAM_TEST_UNSET-b}${SEGSTREAM_TEST_EMPTY?y}', " \
           "type: synthetic}\n"
    monkeypatch.delenv("SEGSTREAM_TEST_UNSET", raising=False)
    assert load_config(write(text)).sources[0].name == "ab"


def test_a_secret_comes_from_a_mounted_file_read_at_each_load_and_is_never_printed(capsys, write, tmp_path,
                                                                                   monkeypatch):
    """Found probing a fleet's configs: secrets came from the run's environment only (Docker's and
    Kubernetes' secrets are files), so a rotated camera password needed a restart of every camera."""
    secret = tmp_path / "cam_password"
    secret.write_text("p@ss:w/rd\n")  # as an editor or kubectl leaves it: one closing line end
    path = write(f"sources:\n  - {{name: cam, type: stream, url: 'rtsp://admin:${{file:{secret}}}@10.0.0.1/live'}}\n"
                 f"sinks: {{redis: {{url: 'redis://localhost:6379/0', password: '${{file:{secret}}}'}}}}\n")
    cfg = load_config(path)
    assert cfg.sources[0].url == "rtsp://admin:p%40ss%3Aw%2Frd@10.0.0.1/live" and cfg.sinks.redis.password == "p@ss:w/rd"
    secret.write_text("rotated")  # a reload reads the config again, and the file with it
    assert load_config(path).sinks.redis.password == "rotated"
    assert main(["validate", "--print", path]) == 0
    assert "rotated" not in capsys.readouterr().out
    secret.unlink()
    [line] = errors_of(capsys, ["validate", path])
    assert line == (f"sources[0].url and 1 more place: ${{file:{secret}}}: cannot read it (No such file or directory) "
                    "— mount the secret there, or fix the path")
    [line] = errors_of(capsys, ["validate", write("sources:\n  - {name: '${file:pw}', type: synthetic}\n")])
    assert line == "sources[0].name: ${file:pw}: give the secret file's absolute path, e.g. ${file:/run/secrets/pw}"
    # a path of variables: systemd's LoadCredential= gives the folder in CREDENTIALS_DIRECTORY (found probing it)
    secret.write_text("from-systemd")
    monkeypatch.setenv("SEGSTREAM_TEST_CREDENTIALS", str(secret.parent))
    path = write(f"sources:\n  - {{name: cam, type: synthetic}}\n"
                 f"sinks: {{redis: {{url: 'redis://localhost:6379/0', "
                 f"password: '${{file:${{SEGSTREAM_TEST_CREDENTIALS}}/{secret.name}}}'}}}}\n")
    assert load_config(path).sinks.redis.password == "from-systemd"


def test_a_stream_s_http_headers_and_cookies_are_never_printed_and_its_url_s_host_is(capsys, write):
    """Found probing as an attacker: ``validate --print`` showed a source's FFmpeg options
    ``headers: "Authorization: Bearer ..."`` and ``cookies`` whole."""
    from segstream.connectors.redaction import remember_in, scrub

    path = write("sources:\n  - name: hls\n    type: stream\n    url: https://cdn.example.com/live/index.m3u8\n"
                 "    options:\n      headers: \"Authorization: Bearer eyJ.SECRETBEARER\\r\\nUser-Agent: cam-reader\\r\\n"
                 "Cookie: csrf=CSRFSECRET2; sid=SIDSECRET3\"\n"
                 "      cookies: \"sessionid=COOKIESECRET123; path=/; domain=cdn.example.com\"\n")
    assert main(["validate", "--print", path]) == 0
    out = capsys.readouterr().out
    assert "SECRETBEARER" not in out and "COOKIESECRET123" not in out and "headers: '***'" in out
    assert "url: https://cdn.example.com/live/index.m3u8" in out, "a cookie's domain is no secret"
    # in any line where a header's or cookie's value lands (FFmpeg's errors quote them), not the others
    assert scrub("GET with Bearer eyJ.SECRETBEARER, sessionid=COOKIESECRET123, agent cam-reader") == \
        "GET with ***, sessionid=***, agent cam-reader"
    # every cookie of a Cookie header, and a token quoted without its scheme (found reviewing)
    assert scrub("csrf=CSRFSECRET2 invalid; sid=SIDSECRET3 expired; token eyJ.SECRETBEARER") == \
        "csrf=*** invalid; sid=*** expired; token ***"
    # not a cookie that is no credential, nor a header named like one (found probing an upgrade: region=eu-west-1
    # hid every host of the region, X-Auth-Realm the camera's)
    path = write("sources:\n  - name: gate-north\n    type: stream\n    url: http://cam1.eu-west-1.example.com/v.mjpg\n"
                 "    options:\n      headers: \"X-Auth-Realm: cam1.eu-west-1.example.com\\r\\n"
                 "Cookie: region=eu-west-1; view=gate-north; sid=SIDSECRET4\"\n")
    assert main(["validate", "--print", path]) == 0
    out = capsys.readouterr().out
    assert "name: gate-north" in out and "url: http://cam1.eu-west-1.example.com/v.mjpg" in out
    assert scrub("view gate-north in eu-west-1, sid SIDSECRET4") == "view gate-north in eu-west-1, sid ***"
    remember_in({"headers": "X-Authorization: Bearer XAUTHSECRET1\r\nX-Auth: XAUTHSECRET3\r\nAuthentication: AUTHNSECRET2"})
    assert scrub("XAUTHSECRET1 XAUTHSECRET3 AUTHNSECRET2") == "*** *** ***"  # (found reviewing: auth dropped)


def test_bad_yaml_names_the_line(capsys, write):
    path = write("sources:\n  - name: cam0\n    type: [file\n")
    [line] = errors_of(capsys, ["validate", path])
    assert line.startswith(f"{path} line 4") and "invalid YAML" in line


def test_missing_config_file(capsys, tmp_path):
    [line] = errors_of(capsys, ["validate", str(tmp_path / "nope.yaml")])
    assert line == f"config file '{tmp_path / 'nope.yaml'}' does not exist"


def test_a_shipped_config_s_name_not_found_here_says_where_the_installed_one_is(capsys, tmp_path, monkeypatch):
    # the air-gapped install probe: the README's configs/... paths are a checkout's; a wheel has them elsewhere
    from segstream.pipeline.config import SHIPPED_CONFIGS

    monkeypatch.chdir(tmp_path)
    [line] = errors_of(capsys, ["validate", "configs/rtsp_camera.yaml"])
    assert line == (f"config file 'configs/rtsp_camera.yaml' does not exist — segstream ships a config of that name: "
                    f"{SHIPPED_CONFIGS / 'rtsp_camera.yaml'} (copy it to edit it)")
    assert (SHIPPED_CONFIGS / "rtsp_camera.yaml").is_file()


def test_duplicate_source_names(capsys, write, clip):
    text = VALID.format(clip=clip).replace("name: synth", "name: cam0")
    [line] = errors_of(capsys, ["validate", write(text)])
    assert line.startswith("sources: source name 'cam0' is used by sources[0] and sources[1]")


def test_set_overrides_with_yaml_typing_and_list_index(write, clip, tmp_path):
    other = tmp_path / "other.mp4"
    other.write_bytes(clip.read_bytes())
    cfg = load_config(
        write(VALID.format(clip=clip)),
        [
            f"sources.0.path={other}",
            "sources[1].fps=12.5",
            "engine.batch_size=8",
            "sinks.redis.url=null",
            "model.compile=true",
            "model.postprocess=exact",
        ],
    )
    assert cfg.sources[0].path == str(other) and cfg.sources[1].fps == 12.5
    assert cfg.engine.batch_size == 8 and cfg.sinks.redis.url is None and cfg.model.compile is True
    assert cfg.model.postprocess == "exact" and cfg.model.precision == "auto"


def test_set_names_a_source_by_its_name_and_a_run_s_index_overrides_follow_the_source(write, clip, capsys):
    """Found probing a fleet's configs: `--set sources.a-cam03.max_fps=1` was refused ("index it
    with a number"), and a `sources.N` override applied at a reload to whichever source the file
    then had at N."""
    from segstream.pipeline.config import overrides_by_name

    path = write(VALID.format(clip=clip).replace("name: synth", "name: synth.1"))
    cfg = load_config(path, ["sources.cam0.max_fps=2", "sources[synth.1].fps=12.5"])
    assert cfg.sources[0].max_fps == 2 and cfg.sources[1].fps == 12.5
    [line] = errors_of(capsys, ["validate", path, "--set", "sources.cam9.max_fps=2"])
    assert line == "--set sources.cam9.max_fps: sources has no entry named 'cam9' (its names: cam0, synth.1)"
    # a run's overrides by index name the source there at its start; one past the file's stays an index
    named = overrides_by_name(path, ["sources.1.fps=5", "sources[0].max_fps=1", "sources.2.name=x", "engine.threads=1"])
    assert named == ["sources[synth.1].fps=5", "sources[cam0].max_fps=1", "sources.2.name=x", "engine.threads=1"]
    moved = write(VALID.format(clip=clip).replace("name: synth", "name: synth.1").replace(
        "sources:\n", "sources:\n  - {name: new, type: synthetic}\n"))
    cfg = load_config(moved, named[:2])
    assert [(s.name, s.max_fps, getattr(s, "fps", None)) for s in cfg.sources] == \
        [("new", None, 25.0), ("cam0", 1, None), ("synth.1", None, 5)]
    # found reviewing: a rename among the overrides broke the start ("no entry named cam0"); names of
    # digits only were taken back as indices (the override went to another camera)
    digits = write("sources:\n  - {name: '7', type: synthetic}\n  - {name: lobby, type: synthetic}\n")
    named = overrides_by_name(digits, ["sources.1.name=hall", "sources.1.max_fps=2", "sources.0.max_fps=3"])
    assert named == ["sources[lobby].name=hall", "sources[hall].max_fps=2", "sources.0.max_fps=3"]
    assert [(s.name, s.max_fps) for s in load_config(digits, named).sources] == [("7", 3), ("hall", 2)]


def test_validate_takes_a_fleet_s_files_away_from_their_host_and_prints_the_effective_config(capsys, tmp_path,
                                                                                             monkeypatch):
    """Found probing a fleet's configs: validate took one file; in CI (away from the host) it
    failed on the videos and weights only the host has; nothing showed the config as the run
    takes it (defaults, variables, --set applied)."""
    monkeypatch.setenv("SEGSTREAM_TEST_CAMPW", "hunter2")
    host = tmp_path / "host.yaml"
    host.write_text("sources:\n"
                    "  - {name: cam, type: stream, url: 'rtsp://admin:${SEGSTREAM_TEST_CAMPW}@10.0.0.1/live'}\n"
                    "  - {name: vid, type: file, path: /nowhere/clip.mp4}\n"
                    "  - {name: srt, type: stream, url: 'srt://10.0.0.2:9000?passphrase=averylongpass1'}\n"
                    "  - {name: cam2, type: stream, url: 'rtsp://10.0.0.3/live?user=admin&password=rtspqs77'}\n"
                    "model: {checkpoint: /nowhere/model.safetensors, labels: /nowhere/labels.json}\n"
                    "sinks: {redis: {url: 'redis://localhost:6379/0', password: '${file:/run/secrets/nowhere}'}}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("sources:\n  - {name: cam, type: steam}\n")
    lines = errors_of(capsys, ["validate", str(host)])
    assert any("/nowhere/clip.mp4" in line for line in lines) and any("/nowhere/model" in line for line in lines)
    assert any("${file:/run/secrets/nowhere}: cannot read it" in line for line in lines)
    # away from the host: the files are not looked at; a mistake in another file is still said, named
    assert main(["validate", "--no-files", str(host), str(typo)]) == 2
    out, err = capsys.readouterr()
    assert out == f"ok: {host}: 4 sources, model synthetic_eomt_tiny_256 (the files it names not looked at)\n"
    assert err == f"segstream: error: {typo}: sources[0].type (line 2): unknown source type 'steam' — use file, stream, " \
                  'camera, snapshot, images, synthetic, custom (README, "Cameras, streams and image folders")\n'
    # the effective config, secrets as ***, alone on stdout
    assert main(["validate", "--no-files", "--print", str(host), "--set", "engine.batch_size=8"]) == 0
    out, err = capsys.readouterr()
    effective = yaml.safe_load(out)
    assert effective["engine"]["batch_size"] == 8 and effective["engine"]["max_wait_ms"] == 20.0
    assert effective["sources"][0]["url"] == "rtsp://admin:***@10.0.0.1/live"
    # found reviewing: credentials in a URL's query (SRT's passphrase, a camera's password) were printed
    assert effective["sources"][2]["url"] == "srt://10.0.0.2:9000?passphrase=***"
    assert effective["sources"][3]["url"] == "rtsp://10.0.0.3/live?user=admin&password=***"
    assert effective["sinks"]["redis"]["password"] == "***"  # (a mounted secret, not read away from its host)
    # RTSP's transport is said of RTSP only (found probing: srt:// and udp:// read as "transport: tcp")
    assert effective["sources"][0]["transport"] == "tcp" and "transport" not in effective["sources"][2]
    assert "hunter2" not in out and "averylongpass1" not in out and "rtspqs77" not in out and err.startswith("ok: ")
    # a labels file without weights is refused there too (found reviewing: --no-files let it through)
    no_weights = tmp_path / "no_weights.yaml"
    no_weights.write_text("sources:\n  - {name: cam, type: synthetic}\nmodel: {labels: /nowhere/labels.json}\n")
    [line] = errors_of(capsys, ["validate", "--no-files", str(no_weights)])
    assert line.startswith("model.labels: a model of your own classes needs its weights")
    broken = tmp_path / "labels.json"
    broken.write_text("{not json")
    assert main(["validate", "--no-files", str(host), "--set", f"model.labels={broken}"]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["validate", "--no-files", "--json", str(host), str(typo)]) == 2
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["config"], r["ok"]) for r in reports] == [(str(host), True), (str(typo), False)]


def test_each_error_says_the_line_of_the_file_that_writes_its_key_or_the_set_that_gave_it(capsys, write, clip):
    """A fleet's file of 30 cameras: "sources[17].transport" meant counting entries by hand, and a
    key merged from an anchor is written elsewhere. Each line now says the file's line (the
    anchor's for a merged key, the entry's for a missing key) or the --set that wrote the value."""
    path = write(f"""\
        x-camera: &camera
          type: stream
          transport: udpp
        sources:
          - name: lobby
            type: file
            path: '{clip}'
            max_fps: -3
          - {{<<: *camera, name: dock, url: 'udp://0.0.0.0:5000'}}
          - name: gate
            type: stream
        engine:
          batch_size: zero
        """)
    assert main(["validate", path, "--set", "engine.max_wait_ms=-1", "--set", "sources.gate.url=rtsp://h/x",
                 "--set", "sources[gate].queue_size=-2"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "segstream: error: sources[0].max_fps (source lobby, line 8): Input should be greater than 0 (got -3)",
        "segstream: error: sources[1].transport (source dock, line 3): Input should be 'tcp', 'udp', 'udp_multicast' or 'http' (got 'udpp')",
        "segstream: error: sources[2].queue_size (source gate, from --set): Input should be greater than 0 (got -2)",
        "segstream: error: engine.batch_size (line 13): Input should be a valid integer, unable to parse string as "
        "an integer (got 'zero')",
        "segstream: error: engine.max_wait_ms (from --set): Input should be greater than or equal to 0 (got -1)",
    ]
    assert main(["validate", path]) == 2  # a missing key: the line of the entry that lacks it
    assert "sources[2].url (source gate, line 10): required key is missing" in capsys.readouterr().err
    # an override of a source renamed by a later one is still the override's (found in review)
    assert main(["validate", path, "--set", "sources.dock.transport=bad", "--set", "sources.dock.name=pier",
                 "--set", "sources.gate.url=rtsp://h/x"]) == 2
    assert ("sources[1].transport (source pier, from --set): Input should be 'tcp', 'udp', 'udp_multicast' or 'http' (got 'bad')"
            in capsys.readouterr().err)
    with pytest.raises(ConfigError) as raised:  # the library's overrides are named as such
        load_config(path, {"sources.gate.url": "rtsp://h/x", "engine.batch_size": 0})
    assert str(raised.value).splitlines()[-1] == ("engine.batch_size (from the overrides): Input should be greater "
                                                  "than 0 (got 0)")


@pytest.mark.parametrize("name", ["Kamera Süd", "摄像头1", "..", "."])
def test_a_source_name_that_is_no_ascii_word_or_only_dots_is_refused_saying_what_a_name_takes(capsys, write, clip,
                                                                                                name):
    """Found by an i18n probe: 'use letters' read as refusing ü and 摄, which are letters to their
    users; and `..` passed, its files sink output `..jsonl` and preview `../` landing elsewhere."""
    path = write(f"sources:\n  - {{name: '{name}', type: file, path: '{clip}'}}\n")
    [line] = errors_of(capsys, ["validate", path])
    assert line == (f"sources[0].name: {name!r} is not a valid source name — use ASCII letters, digits, '_', '.' "
                    "and '-' (not '.' or '..' alone)")
    assert load_config(write(f"sources:\n  - {{name: '...', type: file, path: '{clip}'}}\n")).sources[0].name == "..."


def test_a_config_saved_as_utf_16_is_read_and_one_in_another_encoding_is_one_line(capsys, tmp_path, clip):
    """Found by an i18n probe: Notepad's "Unicode" (UTF-16) config was a raw codec error."""
    config = tmp_path / "windows.yaml"
    config.write_text(f"sources:\r\n  - {{name: cam, type: file, path: '{clip}', max_fps: -1}}\r\n", encoding="utf-16")
    [line] = errors_of(capsys, ["validate", str(config)])
    assert line == "sources[0].max_fps: Input should be greater than 0 (got -1)"
    assert main(["validate", str(config)]) == 2
    assert "(line 2)" in capsys.readouterr().err  # where, in the UTF-16 file too
    config.write_bytes(b"sources: [caf\xe9]\n")
    [line] = errors_of(capsys, ["validate", str(config)])
    assert line == f"config file '{config}' is not UTF-8 text (byte 0xe9 at offset 13) — save it as UTF-8"


def test_set_errors_are_config_errors(capsys, write, clip):
    path = write(VALID.format(clip=clip))
    [line] = errors_of(capsys, ["validate", path, "--set", "sources.5.path=x.mp4"])
    assert line == "--set sources.5.path: sources has 2 entries (indices 0 to 1)"
    [line] = errors_of(capsys, ["validate", path, "--set", "engine.batch_size=0"])
    assert line == "engine.batch_size: Input should be greater than 0 (got 0)"


def test_redis_max_age_s_is_off_by_default_and_must_be_above_0(capsys, write, clip):
    path = write(VALID.format(clip=clip))
    assert load_config(path).sinks.redis.max_age_s is None
    assert load_config(path, ["sinks.redis.max_age_s=600"]).sinks.redis.max_age_s == 600
    [line] = errors_of(capsys, ["validate", path, "--set", "sinks.redis.max_age_s=0"])
    assert line == "sinks.redis.max_age_s: Input should be greater than 0 (got 0)"


def test_schema_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {"sources", "model", "engine", "tracking", "stages", "sinks", "ops", "batch",
                                         "filters"}
    assert schema["required"] == ["sources"]
    assert set(schema["$defs"]["RedisSentinelConfig"]["properties"]) == {"username", "password"}
    assert set(schema["$defs"]["StageConfig"]["properties"]) == {"use", "options", "sources"}
    assert set(schema["$defs"]["SinksConfig"]["properties"]) == {"redis", "files", "preview", "custom"}


def test_the_schema_takes_a_file_s_x_keys_and_validate_finds_conflicts_the_run_would_meet(capsys, write, clip):
    """Found probing a fleet's configs: the schema refused the top-level x- keys README gives for
    anchors (editors flagged every such file); a password in the Redis URL and another in
    sinks.redis.password passed plain validate (found at the run's connect); frames and events
    written to one stream passed too, and were mixed."""
    import jsonschema
    import yaml

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    anchored = "x-file: &file {type: file, path: a.mp4}\nsources:\n  - {<<: *file, name: a}\n"
    jsonschema.validate(yaml.safe_load(anchored), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(anchored.replace("x-file", "file")), schema)

    base = VALID.format(clip=clip).replace("url: redis://localhost", "url: redis://:url-pw@localhost")
    [line] = errors_of(capsys, ["validate", write(base)])
    assert line == ("sinks.redis: the url redis://:***@localhost:6379/0 has a password and sinks.redis.password "
                    "another one, and the URL's would be used — keep the password in one of them")
    assert "url-pw" not in line
    assert load_config(write(base.replace("${SEGSTREAM_TEST_PW:-secret}", "url-pw"))).sinks.redis.password == "url-pw"
    [line] = errors_of(capsys, ["validate", write(VALID.format(clip=clip)), "--set",
                                "sinks.redis.events_stream=segstream:{source}:frames"])
    assert line == ("sinks.redis: stream and events_stream are both 'segstream:{source}:frames': frames and events "
                    "would be mixed in one stream — give them different names")


def test_every_key_of_the_printed_schema_has_a_one_line_description(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    keys = {}

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                keys[f"{where}.{key}".lstrip(".")] = value.get("description", "")
            for key, value in node.items():
                walk(value, f"{where}.{key}".lstrip(".") if key != "properties" else where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(schema, "")
    # found probing: not one key had a description (sinks.redis.maxlen, max_age_s, files, preview...)
    assert len(keys) > 150 and "$defs.RedisSinkConfig.maxlen" in keys and "$defs.PreviewSinkConfig.opacity" in keys
    assert not [key for key, said in keys.items() if not said.strip() or "\n" in said], keys


def test_a_reference_in_url_credentials_is_percent_encoded_where_the_url_needs_it():
    from segstream.pipeline.config import interpolate

    env = {"PW": "p@ss:w#rd/x?%z", "DONE": "ab%41cd", "PATH_PART": "a/b#c"}
    data = {"url": "rtsp://admin:${PW}@10.0.0.5:554/live/${PATH_PART}", "other": "rtsp://u:${DONE}@h/x",
            "plain": "${PW}"}
    out = interpolate(data, env)
    assert out["url"] == "rtsp://admin:p%40ss%3Aw%23rd%2Fx%3F%25z@10.0.0.5:554/live/a/b#c"  # the path is left as given
    assert out["other"] == "rtsp://u:ab%2541cd@h/x"  # a '%' in the value is a '%' of the password
    assert out["plain"] == env["PW"]  # not a URL: unchanged
    # one variable for user and password: its first ':' separates them
    auth = interpolate({"url": "rtsp://${AUTH}@cam/x"}, {"AUTH": "admin:se:c#ret"})
    assert auth["url"] == "rtsp://admin:se%3Ac%23ret@cam/x"


def test_a_folder_given_as_a_file_source_says_what_to_use_instead(capsys, tmp_path):
    (tmp_path / "clips").mkdir()
    config = tmp_path / "p.yaml"
    config.write_text("sources: [{name: a, type: file, path: clips}]\n")
    [line] = errors_of(capsys, ["validate", str(config)])
    assert "'clips' is a folder" in line and "type: images" in line and "segstream batch" in line


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_number_that_is_not_finite_is_refused(capsys, write, clip, value):
    """engine.max_wait_ms=inf validated, then the run failed with a traceback (found probing)."""
    (line,) = errors_of(capsys, ["validate", write(VALID.format(clip=clip)), "--set", f"engine.max_wait_ms={value}"])
    assert line.startswith("engine.max_wait_ms: Input should be a finite number")


def test_a_redis_url_whose_database_is_not_a_number_is_refused(capsys, write, clip):
    """redis-py took redis://host/abc as database 0, silently (found probing)."""
    text = VALID.format(clip=clip).replace("redis://localhost:6379/0", "redis://localhost:6379/abc")
    [line] = errors_of(capsys, ["validate", write(text)])
    assert "names database 'abc', not a number" in line


def test_a_password_yaml_reads_as_a_number_says_to_quote_it_without_showing_it(capsys, write, clip):
    text = VALID.format(clip=clip).replace("${SEGSTREAM_TEST_PW:-secret}", "98765432")
    [line] = errors_of(capsys, ["validate", write(text)])
    assert line == "sinks.redis.password: Input should be a valid string — put the password in quotes"


def test_two_sources_listening_on_one_port_are_refused(capsys, write):
    # found probing: both passed validate, and the second retried "address already in use" for good
    text = """
    sources:
      - {name: a, type: stream, url: 'srt://0.0.0.0:9003?mode=listener'}
      - {name: b, type: stream, url: 'udp://127.0.0.1:9003'}
      - {name: c, type: stream, url: 'rtsp://10.0.0.1:9003/x'}
    """
    assert errors_of(capsys, ["validate", write(text)]) == [
        "sources: sources[0] and sources[1] both listen on UDP port 9003: only one can hold it — give each its own"]
    cameras = "sources:\n  - {name: a, type: camera, device: 0}\n  - {name: b, type: camera, device: /dev/video0}\n"
    assert errors_of(capsys, ["validate", write(cameras)]) == [
        "sources: sources[0] and sources[1] both listen on '/dev/video0': only one can hold it — give each its own"]
    # multicast groups on one port, and sockets that share their port, are bound side by side
    groups = """
    sources:
      - {name: a, type: stream, url: 'udp://239.255.0.1:5000'}
      - {name: b, type: stream, url: 'udp://239.255.0.2:5000'}
      - {name: c, type: stream, url: 'udp://0.0.0.0:5000?reuse=1'}
    """
    assert load_config(write(groups)).sources


@pytest.mark.parametrize("section", [
    "sources: [{name: cam, type: stream, url: 'admin:${CAM_PASSWORD}@192.168.1.64:554/live'}]",  # no scheme
    "sources: [{name: cam, type: stream, url: 'rtsp:/admin:${CAM_PASSWORD}@192.168.1.64/live'}]",  # one slash
    "sources: [{name: cam, type: camera, device: 'rtsp://admin:${CAM_PASSWORD}@10.0.0.5/live'}]",  # wrong field
    "sources: [{name: cam, type: file, path: 'rtsp:/admin:${CAM_PASSWORD}@10.0.0.5/live'}]",
    "sources: [{name: cam, type: synthetic}]\nsinks: {redis: {url: 'rediss//alice:${CAM_PASSWORD}@host'}}",
    "sources: [{name: cam, type: synthetic}]\nmodel: {checkpoint: 'https://user:${HF_TOKEN}@example.com/w.pt'}",
    "sources: [{name: cam, type: stream, url: 'srt://10.0.0.5:9000', options: {passphrase: ['${CAM_PASSWORD}']}}]",
])
def test_a_secret_that_lands_where_it_does_not_belong_is_not_echoed(capsys, write, monkeypatch, section):
    """Found probing: `validate` echoed a password from the environment in full when its URL was
    mistyped (no scheme, one slash) or given to the wrong field, and a passphrase given as a list."""
    monkeypatch.setenv("CAM_PASSWORD", "S3cretCam")
    monkeypatch.setenv("HF_TOKEN", "hf_S3cretToken")
    lines = errors_of(capsys, ["validate", write(section + "\n")])
    text = "\n".join(lines)
    assert lines and not any(secret in text for secret in ("S3cretCam", "hf_S3cretToken")), text
    assert "***" in text, text  # the line still says which value is wrong, its secret hidden


def test_secrets_stay_out_of_log_records_too(capsys, monkeypatch):
    import logging

    from segstream.connectors.redaction import remember
    from segstream.pipeline.logs import configure_logging

    configure_logging("json")
    remember("W1ldSecret")
    logging.getLogger("segstream.test").warning("connecting with %s to admin:Other0ne@cam", "W1ldSecret")
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["message"] == "connecting with *** to admin:***@cam"
    configure_logging("text")


def test_scrubbing_leaves_a_user_without_password_and_a_redacted_url_as_they_are():
    """Found in review: ``rtsp://***@cam`` (already redacted) and ``rtsp://admin@cam`` read
    ``rtsp:***@cam``: the scheme's ':' taken for the user's, '//admin' for a password."""
    from segstream.connectors.redaction import scrub

    assert scrub("cannot open 'rtsp://***@cam:554/live'") == "cannot open 'rtsp://***@cam:554/live'"
    assert scrub("cannot open 'rtsp://admin@cam/live'") == "cannot open 'rtsp://admin@cam/live'"
    assert scrub("rtsp://admin:S3cret@cam/live and cam:0ther@host") == "rtsp://admin:***@cam/live and cam:***@host"
    # found in review: the fix above let Redis's own form, an empty user, through
    assert scrub("cannot reach Redis at redis://:s3cretpw@db:6379") == "cannot reach Redis at redis://:***@db:6379"
    # found by release QA: FFmpeg's multicast form, an empty user info, was shown as if it held a password
    from segstream.connectors.urls import redact_url

    assert redact_url("udp://@239.1.1.1:5000") == "udp://@239.1.1.1:5000"
    assert redact_url("redis://:pw@db:6379") == "redis://***@db:6379"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_stay_out_of_a_logged_traceback(capsys, log_format):
    """Found reviewing: the filter scrubbed the message, the exception text under it went out as raised."""
    import logging

    from segstream.connectors.redaction import remember
    from segstream.pipeline.logs import configure_logging

    def connect_to_the_sink():
        try:
            raise OSError("refused by redis://default:Tr4ceSecret@cache:6379")
        except OSError as refusal:
            raise ConnectionError("retrying with T0kenInTrace") from refusal

    configure_logging(log_format)
    remember("T0kenInTrace")
    try:
        connect_to_the_sink()
    except ConnectionError:
        logging.getLogger("segstream.test").exception("the sink gave up")
    finally:
        configure_logging("text")
    err = capsys.readouterr().err
    logged = json.loads(err.strip().splitlines()[-1])["exc_info"] if log_format == "json" else err
    assert "Tr4ceSecret" not in err and "T0kenInTrace" not in err, err
    # the traceback itself is kept: where it was raised, both exceptions, their text less the secrets
    assert "Traceback" in logged and "connect_to_the_sink" in logged, logged
    assert "redis://default:***@cache:6379" in logged and "ConnectionError: retrying with ***" in logged, logged


def test_a_config_printed_shows_no_password_or_stream_options(write):
    """Found probing: repr(cfg.sinks.redis) showed password='...', and a stream's options its passphrase."""
    cfg = load_config(write("sources: [{name: cam, type: stream, url: 'srt://h:9000', options: {passphrase: "
                            "Pa55phraseXYZ}}]\nsinks: {redis: {url: 'redis://h', password: S3cretPw}}\n"))
    assert cfg.sinks.redis.password == "S3cretPw" and cfg.sources[0].options == {"passphrase": "Pa55phraseXYZ"}
    assert "S3cretPw" not in repr(cfg) and "Pa55phraseXYZ" not in repr(cfg)


@pytest.mark.parametrize("reference", ["hf://../..", "hf://owner/.hidden", "hf://-x/name", "hf://a/b--c",
                                       "hf://owner/name/../weights.bin"])
def test_a_hub_reference_the_hub_would_refuse_is_refused_by_validate(capsys, write, reference):
    """Found probing: `hf://../..` passed validate, then run ended in huggingface_hub's traceback."""
    (line,) = errors_of(capsys, ["validate", write(f"sources: [{{name: cam, type: synthetic}}]\n"
                                                   f"model: {{checkpoint: '{reference}'}}\n")])
    assert line.startswith(f"model.checkpoint: '{reference}' ") and "e.g. hf://tue-mps/" in line


def test_a_hub_reference_that_passed_the_config_is_checked_where_it_is_resolved_too():
    from segstream.connectors.checkpoints import resolve_hf
    from segstream.connectors.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"'hf://\.\./\.\.' '\.\.' is not a repository's owner or name"):
        resolve_hf("hf://../..")


@pytest.mark.parametrize("where", ["options: {passphrase: short}", "url: 'srt://10.0.0.5:9000?passphrase=short'"])
def test_an_srt_passphrase_srt_cannot_take_is_refused_by_validate(capsys, write, where):
    """Found probing: a 5-character passphrase passed validate; the run then said the far end
    refused it ('check the passphrase'), though SRT itself takes 10 to 79 characters only."""
    url = "" if where.startswith("url") else "url: 'srt://10.0.0.5:9000', "
    (line,) = errors_of(capsys, ["validate", write(f"sources: [{{name: cam, type: stream, {url}{where}}}]\n")])
    assert line == ("sources[0]: the SRT passphrase has 5 characters; SRT takes 10 to 79 — set the same passphrase "
                    "of that length on both ends")
    assert "short" not in line


def test_the_srt_passphrase_checked_is_the_one_ffmpeg_uses_the_url_s(capsys, write):
    """Found probing: a valid options.passphrase with ?passphrase=short in the URL passed validate;
    FFmpeg uses the URL's, and every open failed with "Bad parameters"."""
    source = "{name: cam, type: stream, url: 'srt://10.0.0.5:9000?passphrase=short', options: {passphrase: longenough12}}"
    (line,) = errors_of(capsys, ["validate", write(f"sources: [{source}]\n")])
    assert line == ("sources[0]: the SRT passphrase (the URL's, which FFmpeg uses over options.passphrase) has 5 "
                    "characters; SRT takes 10 to 79 — set the same passphrase of that length on both ends")


@pytest.mark.parametrize("where, problem", [
    ("url: 'srt://10.0.0.5:9000?latency=200'",
     "the SRT latency is in microseconds: 200 is 0.2 ms; for 200 ms give 200000"),
    ("url: 'srt://10.0.0.5:9000', options: {latency: 200ms}",
     "the SRT latency '200ms' is not a whole number — it is in microseconds (200000 for 200 ms)"),
    ("url: 'srt://10.0.0.5:9000?mode=listen'", "the SRT mode 'listen' is none of caller, listener, rendezvous"),
])
def test_srt_latency_and_mode_ffmpeg_would_misread_are_refused_by_validate(capsys, write, where, problem):
    # found probing: latency is in microseconds (a 200 meant as ms is 0.2 ms), and a bad one passed
    (line,) = errors_of(capsys, ["validate", write(f"sources: [{{name: cam, type: stream, {where}}}]\n")])
    assert line == f"sources[0]: {problem}"


def test_srt_options_ffmpeg_takes_pass_validate(capsys, write):
    source = ("{name: cam, type: stream, url: 'srt://0.0.0.0:9000?mode=listener&latency=200000', "
              "options: {passphrase: longenough12, latency: 120000}}")
    assert main(["validate", write(f"sources: [{source}]\n")]) == 0, capsys.readouterr().err


def test_an_alias_bomb_is_refused_in_one_line_before_it_is_expanded(capsys, write, clip, monkeypatch):
    """Found by a security review: ten levels of nested anchors ("billion laughs") under a normal
    key made `segstream validate` run past 120 s and 2.3 GB copying the expanded tree."""
    import resource

    levels = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = write(VALID.format(clip=clip) + "engine:\n  laughs:\n" + "\n".join(
        "  " + level for level in levels) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for command in (["validate", path], ["run", path]):
        [line] = errors_of(capsys, command)
        where, _, problem = line.partition(": ")
        assert where.startswith("engine.laughs.l") and problem == (
            "the config expands to more than 100,000 values (nested YAML aliases: an alias bomb?) — write it "
            "without aliases of aliases")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: far from gigabytes


def test_a_preset_runs_at_its_own_task_when_the_config_names_none(capsys, write):
    """Found probing: a config naming only an instance preset was refused: 'preset ... is a
    instance model, the config asks for panoptic' (it asked for nothing)."""
    from segstream.pipeline.model_factory import check_model_config

    cfg = load_config(write("sources: [{name: cam, type: synthetic}]\n"
                            "model: {preset: coco_instance_eomt_large_640, checkpoint: random}\n"))
    assert cfg.model.task is None and check_model_config(cfg.model).task == "instance"
    (line,) = errors_of(capsys, ["validate", write("sources: [{name: cam, type: synthetic}]\nmodel: {preset: "
                                                   "coco_instance_eomt_large_640, checkpoint: random, task: semantic}\n")])
    assert line.startswith("model.task: preset coco_instance_eomt_large_640 is an instance model, the config asks "
                           "for semantic — remove model.task")


def test_a_program_gives_its_config_as_a_mapping(tmp_path, monkeypatch):
    # Found probing (a service embedding segstream): load_config took only a file; validating a
    # dict meant a private function (or pydantic's own ValidationError, without ${VAR} or paths)
    import segstream

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    monkeypatch.setenv("CAM_FPS", "3")
    data = {"sources": [{"name": "a", "type": "file", "path": "clip.mp4", "max_fps": "${CAM_FPS}"}],
            "model": {"device": "cpu"}}
    cfg = segstream.load_config(data, ["engine.batch_size=2"], base_dir=tmp_path)
    assert cfg.engine.batch_size == 2 and cfg.sources[0].max_fps == 3
    assert Path(cfg.sources[0].path) == clip
    assert data["sources"][0]["max_fps"] == "${CAM_FPS}" and "engine" not in data, "the caller's mapping is unchanged"
    # found by release QA: a YAML file's x- keys (a place for anchors) were refused in a mapping
    assert segstream.load_config({**data, "x-camera": {"type": "stream"}}, base_dir=tmp_path).sources[0].name == "a"
    with pytest.raises(segstream.ConfigError, match="modle: unknown key — did you mean 'model'"):
        segstream.load_config({"sources": data["sources"], "modle": {}}, base_dir=tmp_path)


def test_a_redis_url_variable_set_but_empty_is_refused_where_no_default_was_written(tmp_path, monkeypatch, capsys):
    # Found probing (Kubernetes): an empty ConfigMap value for SEGSTREAM_REDIS_URL started an
    # embedded Redis in the pod; /readyz said ready while the entries went where no consumer reads
    config = tmp_path / "pipeline.yaml"
    config.write_text("sources:\n  - {name: cam, type: synthetic, num_frames: 2}\n"
                      "sinks:\n  redis: {url: '${SEGSTREAM_REDIS_URL}'}\n")
    monkeypatch.setenv("SEGSTREAM_REDIS_URL", "")
    with pytest.raises(ConfigError, match=r"^sinks\.redis\.url \(line 4\): environment variable SEGSTREAM_REDIS_URL is set "
                                          r"but empty, so an embedded Redis would stand in"):
        load_config(config)
    assert main(["validate", str(config)]) == 2
    assert "write ${SEGSTREAM_REDIS_URL:-} where an embedded Redis is meant" in capsys.readouterr().err
    config.write_text(config.read_text().replace("${SEGSTREAM_REDIS_URL}", "${SEGSTREAM_REDIS_URL:-}"))
    assert load_config(config).sinks.redis.url is None  # said so: the embedded Redis is meant


def test_yaml_nested_deeper_than_python_reads_is_one_line(capsys, write):
    path = write("x-deep: " + "[" * 100_000 + "]" * 100_000 + "\nsources: []\n")
    [line] = errors_of(capsys, ["validate", path])
    assert line.startswith(f"{path}: nested deeper than a config can be")


def test_source_names_whose_files_would_collide_or_be_too_long_are_refused(capsys, write, clip):
    text = VALID.format(clip=clip).replace("name: synth", "name: cam0.events")
    [line] = errors_of(capsys, ["validate", write(text)])
    assert "source names 'cam0' and 'cam0.events' (sources[1]) would share the file cam0.events.jsonl" in line
    text = VALID.format(clip=clip).replace("name: synth", "name: " + "a" * 201)
    [line] = errors_of(capsys, ["validate", write(text)])
    assert line.startswith("sources[1].name") and "at most 200 characters" in line


def test_a_named_pipe_given_as_a_file_is_refused_before_anything_waits_on_it(capsys, write, tmp_path):
    import os

    from segstream.connectors.errors import SourceError
    from segstream.connectors.file_source import FileSource

    fifo = tmp_path / "camera.mp4"
    os.mkfifo(fifo)
    [line] = errors_of(capsys, ["validate", write(f"sources:\n  - {{name: cam0, type: file, path: '{fifo}'}}\n")])
    assert line == (f"sources[0].path: '{fifo}' is a named pipe (FIFO), not a video file — a file source (and "
                    "segstream batch) reads files it can seek in: record the stream to a file, or send it to a "
                    "stream source (udp://, tcp://, srt://)")
    with pytest.raises(SourceError, match="source cam0: .* is a named pipe"):
        FileSource("cam0", str(fifo))  # opening it would wait for a writer, inside FFmpeg


def test_a_batch_config_read_for_a_run_says_it_is_one(tmp_path, capsys):
    # Found probing as an export engineer: load_config of configs/batch.yaml said only that sources were missing
    from segstream.pipeline.cli import main
    from segstream.pipeline.config import BatchPipelineConfig, load_config

    config = Path(__file__).parent.parent / "configs" / "batch.yaml"
    with pytest.raises(ConfigError, match=r"this is a config for segstream batch .* schema=BatchPipelineConfig"):
        load_config(config)
    assert isinstance(load_config(config, schema=BatchPipelineConfig), BatchPipelineConfig)
    assert main(["run", str(config)]) == 2
    assert "run it with segstream batch VIDEOS --config FILE" in capsys.readouterr().err


def test_output_to_a_reader_that_went_away_or_a_full_disk_is_no_traceback():
    # Found probing as an automation engineer: `segstream schema | head -1` and `> /dev/full` ended in tracebacks
    import subprocess
    import sys

    piped = subprocess.run(f"'{sys.executable}' -m segstream schema | head -c 1", shell=True, capture_output=True,
                           text=True, executable="/bin/bash")
    assert piped.stdout == "{" and piped.stderr == "", piped.stderr
    closed = subprocess.run(f"'{sys.executable}' -m segstream schema | head -c 1; exit ${{PIPESTATUS[0]}}", shell=True,
                            capture_output=True, text=True, executable="/bin/bash")
    assert closed.returncode == 141  # as a tool killed by SIGPIPE
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "segstream", "schema"], stdout=full, stderr=subprocess.PIPE,
                              text=True)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "segstream: error: cannot write the output: No space left on device — free space, or write it elsewhere"]


def test_a_task_no_preset_of_the_family_has_names_those_that_have_it_and_run_says_so_before_listening(
        tmp_path, capsys):
    # Found probing as a SeNaTra user: "choose an instance preset" (SeNaTra has none), said by run
    # after its metrics port was opened and announced
    config = tmp_path / "run.yaml"
    config.write_text("sources: [{name: cam, type: synthetic}]\nmodel: {family: senatra, device: cpu, task: instance}\n"
                      "ops: {http: '127.0.0.1:0'}\n")
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segstream: error: model.task: preset synthetic_senatra_tiny_192 is a panoptic model, the config "
                   "asks for instance — remove model.task (or set it to panoptic), or choose an instance preset of "
                   "another family (coco_instance_eomt_large_640, coco_instance_eomt_large_1280: no senatra preset "
                   "is one)"], err


def test_a_sink_s_folder_given_with_the_sink_left_off_is_said(tmp_path, caplog):
    # Found probing (release QA): sinks.files: {dir: X} without enabled: true wrote nothing, unsaid
    from segstream.pipeline.builders import build_sinks

    cfg = load_config({"sources": [{"name": "cam", "type": "synthetic"}],
                       "sinks": {"redis": {"enabled": False}, "files": {"dir": str(tmp_path / "out")},
                                 "preview": {"enabled": False}}})
    assert build_sinks(cfg.sinks) == []
    said = [r.getMessage() for r in caplog.records]
    assert said == ["sinks.files.dir is set but sinks.files.enabled is not true: nothing is written there — set "
                    "sinks.files.enabled: true"], said


def test_validate_print_shows_the_buffer_policy_in_force(capsys, write):
    # found probing the docs as written: --print, "defaults filled in", showed buffer: null
    path = write("sources:\n  - {name: a, type: synthetic}\n  - {name: b, type: synthetic, realtime: true}\n"
                 "  - {name: c, type: synthetic, buffer: newest}\n")
    assert main(["validate", "--print", path]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [source["buffer"] for source in printed["sources"]] == ["every_frame", "newest", "newest"]


def test_what_a_hostile_config_holds_is_one_line_each(capsys, write, clip):
    """Found probing bad input: each of these was a traceback, or passed validate and then was."""
    valid = VALID.format(clip=clip)
    [line] = errors_of(capsys, ["validate", write("? [a, b]\n: x\n" + valid)])
    assert line.endswith("line 1, column 3: invalid YAML: a key that is a list: every key of a config is a name")
    # times past what a wait, a socket's timeout or time_t takes (OverflowError in the run)
    for key, value in (("engine.max_wait_ms", "1e13"), ("sinks.redis.timeout_s", "1e10")):
        [line] = errors_of(capsys, ["validate", write(valid), "--set", f"{key}={value}"])
        assert line.startswith(key) and "is longer than any wait segstream can keep" in line, line
    assert main(["validate", write(valid), "--set", "sinks.redis.timeout_s=86400"]) == 0  # a day: taken
    capsys.readouterr()
    [line] = errors_of(capsys, ["validate", write(valid), "--set", "sinks.redis.maxlen=100000000000000000000000"])
    assert line.startswith("sinks.redis.maxlen") and "past the largest integer" in line
    # FFmpeg's socket timeouts are 32-bit microseconds: 3600 s validated, then every open failed (found probing)
    stream = "sources:\n  - {name: cam, type: stream, url: 'rtsp://10.0.0.5/live', read_timeout_s: 3600}\n"
    [line] = errors_of(capsys, ["validate", write(stream)])
    assert "read_timeout_s" in line and "3600 s is longer than FFmpeg's socket timeouts can be (2146 s" in line
    [line] = errors_of(capsys, ["validate", write(valid), "--set", "sources.1.seed=-5"])  # numpy's: a traceback in the run
    assert line.startswith("sources[1].seed") and "greater than or equal to 0" in line
    # a key's name is no secret: it was said as '***'
    [line] = errors_of(capsys, ["validate", write(valid), "--set", "sinks.redis.status_key=segstream:{source}:frames"])
    assert "status_key is 'segstream:{source}:frames', the name of a stream" in line
    # a value's line break (a variable's) made a line that read as a problem of its own
    [line] = errors_of(capsys, ["validate", write(valid), "--set", "sources.0.path=x\nmodel: oops"])
    assert "file 'x\\nmodel: oops' does not exist" in line


def test_a_config_that_never_ends_is_refused_without_reading_it_all(capsys):
    # found probing bad input: /dev/zero (or `yes |`) as the config was read until memory ran out
    [line] = errors_of(capsys, ["validate", "/dev/zero"])
    assert line == ("config file '/dev/zero' holds more than 256 MiB: no text file of settings or paths is that "
                    "long — name the file you meant")


@pytest.mark.parametrize("command, closed", [("schema", ">&-"), ("--version", ">&-"), ("validate - ", "<&-")])
def test_a_closed_standard_output_or_input_is_said_not_passed_over(command, closed):
    # found probing bad input: `segstream schema >&-` exited 0 with its output lost; tail raised AttributeError
    import subprocess
    import sys

    done = subprocess.run(["bash", "-c", f"{sys.executable} -m segstream {command} {closed}"], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    name = "output" if closed == ">&-" else "input"
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"its standard {name} is closed ({closed}) — give it a file, a pipe or /dev/null"), done.stderr


def test_a_set_value_yaml_would_cut_or_fold_is_taken_as_written(capsys, write, clip, tmp_path):
    # found probing bad input: a path with ' #' lost the rest as a comment, '{source}' became a mapping
    import shutil

    odd = tmp_path / "my video #2.mp4"
    shutil.copy(clip, odd)
    assert main(["validate", "--print", write(VALID.format(clip=clip)), "--set", f"sources.0.path={odd}",
                 "--set", "sinks.redis.stream=site-{source}", "--set", "batch.extensions=[.mp4, .mkv]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sources"][0]["path"] == str(odd)
    assert printed["sinks"]["redis"]["stream"] == "site-{source}" and printed["batch"]["extensions"] == [".mp4", ".mkv"]
    # what 0.3.11 took stays (found probing an upgrade): a secret read from a file ends in a line break,
    # and a block mapping or list is YAML's too
    assert main(["validate", "--print", write(VALID.format(clip=clip)), "--set", "sinks.redis.username=app\n",
                 "--set", "sources.0.filters=min_area: 100", "--set", "sources.1.filters.classes=- disc\n- box"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sinks"]["redis"]["username"] == "app"
    assert printed["sources"][0]["filters"]["min_area"] == 100
    assert printed["sources"][1]["filters"]["classes"] == ["disc", "box"]


def test_a_file_url_is_checked_as_the_path_it_names(capsys, write, clip, tmp_path):
    # found probing bad input: file:///missing.mp4 passed validate (the run then failed, exit 1), and a
    # file:// URL's %-escapes were not decoded (file:///cam%C3%A9ra.mp4 "did not exist")
    import shutil
    import urllib.parse

    named = tmp_path / "caméra vidéo.mp4"
    shutil.copy(clip, named)
    config = write(VALID.format(clip=clip))
    assert main(["validate", "--print", config, "--set", f"sources.0.path=file://{urllib.parse.quote(str(named))}"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["sources"][0]["path"] == str(named)
    [line] = errors_of(capsys, ["validate", config, "--set", f"sources.0.path=file://{tmp_path}/missing.mp4"])
    assert f"file '{tmp_path}/missing.mp4' does not exist" in line


def test_a_set_key_the_file_has_no_section_for_is_said_to_come_from_set(capsys, write):
    # found probing an upgrade: with no engine: section, --set engine.batch_size=-3 lost its "(from --set)"
    config = write("sources:\n  - {name: s, type: synthetic}\n")
    assert main(["validate", config, "--set", "engine.batch_size=-3"]) == 2
    assert capsys.readouterr().err.startswith("segstream: error: engine.batch_size (from --set): ")


def test_a_bad_value_a_variable_gave_names_the_variable(capsys, write, clip, monkeypatch):
    # found probing bad input: SEGSTREAM_REDIS_URL=garbage named "line 20" of a config the user never wrote (the demo's)
    monkeypatch.setenv("SITE_REDIS", "garbage")
    config = VALID.format(clip=clip).replace("url: redis://localhost:6379/0", "url: ${SITE_REDIS}")
    assert main(["validate", write(config)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("segstream: error: sinks.redis.url (line ") and ", from $SITE_REDIS): 'garbage' is not" in line


def test_validate_refuses_fp16_on_a_device_the_config_says_is_the_cpu(capsys, write, clip):
    # found probing as a researcher: validate passed it, and the run then refused it
    assert main(["validate", write(VALID.format(clip=clip)), "--set", "model.device=cpu", "--set",
                 "model.precision=fp16"]) == 2
    assert capsys.readouterr().err.strip().endswith("model.precision: fp16 needs a GPU — use fp32, bf16 or auto on the CPU")
    assert main(["validate", write(VALID.format(clip=clip)), "--set", "model.device=auto", "--set",
                 "model.precision=fp16"]) == 0  # (auto: a GPU where the run has one)
