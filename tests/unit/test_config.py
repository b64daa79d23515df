import pytest

from fshipper import config
from fshipper.config import ConfigError


def load(tmp_path, role="producer", files=None, environ=None, instance=None):
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    return config.load(role, instance, str(tmp_path), environ or {})


BASE = {"fshipper.env": "NATS_URL=nats://n1:4222,nats://n2:4222\nSHIPPER_SUBJECT=shipper\n",
        "producer.env": "SHIPPER_FILE=/var/log/app.log\n",
        "consumer.env": "SHIPPER_OUTPUT=/var/log/central/system.log\n"}


def test_layers_override_in_order(tmp_path):
    files = dict(BASE)
    files["producer.env"] += "SHIPPER_PARTITIONS=4\nHOSTNAME=from-file\n"
    files["producer-b.env"] = "SHIPPER_PARTITIONS=6\n"
    loaded = load(tmp_path, files=files, instance="b", environ={"HOSTNAME": "from-env", "PATH": "/bin"})
    s = loaded.settings
    assert s.nats_url == ("nats://n1:4222", "nats://n2:4222")
    assert s.shipper_partitions == 6 and loaded.sources["SHIPPER_PARTITIONS"].endswith("producer-b.env:1")
    assert s.hostname == "from-env" and loaded.sources["HOSTNAME"] == "environment"
    assert s.name == "producer-b" and s.stream == "SHIPPER"


def test_defaults(tmp_path):
    s = load(tmp_path, "consumer", files=BASE).settings
    assert s.shipper_output == "/var/log/central/system.log-%Y%m%d%H%M"   # no '%': the minute suffix is appended
    assert s.shipper_read_partitions == (0,)
    assert s.shipper_keep_days == 7 and s.shipper_mode == "jetstream"
    assert s.shipper_state_dir == "/var/lib/fshipper"
    assert s.shipper_stream_duplicate_window == 120


def test_hostname_defaults_to_the_os_name(tmp_path, monkeypatch):
    monkeypatch.setattr(config.socket, "gethostname", lambda: "box.example.org")
    loaded = load(tmp_path, files=BASE)
    assert loaded.settings.hostname == "box.example.org"
    assert loaded.sources["HOSTNAME"] == "the OS host name"


def test_sizes_durations_and_lists(tmp_path):
    env = {"SHIPPER_BATCH_BYTES": "512K", "SHIPPER_STREAM_MAX_AGE": "12h", "SHIPPER_STREAM_MAX_BYTES": "10G",
           "SHIPPER_READ_PARTITIONS": "2, 0,1,2"}
    p = load(tmp_path, files=BASE, environ=env).settings
    assert p.shipper_batch_bytes == 512 * 1024
    c = load(tmp_path, "consumer", environ=env).settings
    assert c.shipper_stream_max_age == 12 * 3600 and c.shipper_stream_max_bytes == 10 * 1024 ** 3
    assert c.shipper_read_partitions == (0, 1, 2)


def test_empty_value_means_unset(tmp_path):
    files = dict(BASE)
    files["producer.env"] += "HOSTNAME=\n"
    with pytest.raises(ConfigError, match="NATS_URL is not set"):
        load(tmp_path, files={**files, "fshipper.env": "NATS_URL=\nSHIPPER_SUBJECT=s\n"})


def test_unterminated_quote(tmp_path):
    with pytest.raises(ConfigError, match=r"producer.env:2: SHIPPER_FILE: unterminated"):
        load(tmp_path, files={**BASE, "producer.env": "# x\nSHIPPER_FILE='/var/log/a\n"})


def test_unknown_environment_variables_only_warn_for_our_prefixes(tmp_path):
    loaded = load(tmp_path, files=BASE, environ={"SHIPPER_FIEL": "x", "EDITOR": "vi"})
    assert loaded.warnings == ["environment: unknown setting SHIPPER_FIEL (did you mean SHIPPER_FILE?)"]


def test_bad_instance_name(tmp_path):
    with pytest.raises(ConfigError, match="--instance"):
        load(tmp_path, files=BASE, instance="../x")


def test_stream_name_is_derived_from_the_subject():
    assert config.stream_name("logs.prod-eu") == "LOGS_PROD-EU"


def test_every_setting_is_in_a_sample_env_file_and_the_readme():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    samples = "".join((root / "etc" / "fshipper" / f).read_text()
                      for f in ("fshipper.env", "producer.env", "consumer.env"))
    readme = (root / "README.md").read_text()
    for option in config.OPTIONS:
        assert f"{option.name}=" in samples, option.name
        assert f"`{option.name}`" in readme, option.name


def test_inbox_prefix_is_derived_from_the_identity_unless_set(tmp_path):
    files = dict(BASE)
    files["producer.env"] += "HOSTNAME=web1.example.net\n"
    producer = load(tmp_path, "producer", files=files)
    assert producer.settings.inbox_prefix == "_INBOX_host_web1_example_net"
    assert "NATS_INBOX_PREFIX=_INBOX_host_web1_example_net (derived from HOSTNAME)  # default" \
        in config.describe(producer)
    assert load(tmp_path, "consumer", files=BASE).settings.inbox_prefix == "_INBOX_consumer"
    assert load(tmp_path, "admin", files=BASE).settings.inbox_prefix == "_INBOX_consumer"  # setup, status
    assert load(tmp_path, "producer", files=files,
                environ={"NATS_INBOX_PREFIX": "_INBOX_mine"}).settings.inbox_prefix == "_INBOX_mine"
    with pytest.raises(ConfigError, match="NATS_INBOX_PREFIX"):
        load(tmp_path, "producer", files=files, environ={"NATS_INBOX_PREFIX": "_INBOX.*"})


@pytest.mark.parametrize("url, environ, required", [
    ("nats://n1:4222", {}, False),
    ("tls://n1:4222", {}, True),
    ("nats://n1:4222,tls://n2:4222", {}, True),
    ("wss://n1:443", {}, True),
    ("nats://n1:4222", {"NATS_CA": __file__}, True),
])
def test_tls_is_required_by_a_tls_url_or_a_ca(tmp_path, url, environ, required):
    files = dict(BASE, **{"fshipper.env": f"NATS_URL={url}\nSHIPPER_SUBJECT=shipper\n"})
    assert load(tmp_path, files=files, environ=environ).settings.tls_required is required


def test_a_plain_websocket_with_tls_asked_for_is_refused(tmp_path):
    files = dict(BASE, **{"fshipper.env": "NATS_URL=wss://n1:443,ws://n2:80\nSHIPPER_SUBJECT=shipper\n"})
    with pytest.raises(ConfigError, match=r"fshipper.env:1: NATS_URL='ws://n2:80': a ws:// connection is never TLS"):
        load(tmp_path, files=files)


def test_unusable_tls_files_are_a_config_error_naming_them(tmp_path):
    from fshipper import connection

    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    files = dict(BASE)
    files["fshipper.env"] += f"NATS_CERTIFICATE={tmp_path}/cert.pem\nNATS_KEY={tmp_path}/key.pem\n"
    loaded = load(tmp_path, files=files)
    with pytest.raises(ConfigError, match=r"NATS_CERTIFICATE \(.*fshipper.env:3\), NATS_KEY \(.*fshipper.env:4\): "
                                          r"cannot be used for TLS"):
        connection.check_tls(loaded)


@pytest.mark.parametrize("url, shown", [
    ("nats://n1:4222", "nats://n1:4222"),
    ("tls://web1:s3cret@n1:4222", "tls://web1:***@n1:4222"),
    ("nats://s3cret-token@n1:4222", "nats://***@n1:4222"),
    ("nats://u:p%40ss@[::1]:4222", "nats://u:***@[::1]:4222"),
])
def test_urls_are_shown_without_their_secrets(url, shown):
    from fshipper import connection

    assert connection.redacted(url) == shown
