import pytest

from fshipper import config, wire
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
           "SHIPPER_READ_PARTITIONS": "2, 0,1,2", "SHIPPER_PARTITIONS": "3"}
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


# --- env-file lines: "\n" ends a line, nothing else does ------------------------

# Characters str.splitlines() ends a line at, but an env file does not.
NOT_LINE_ENDS = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\r", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("separator", NOT_LINE_ENDS, ids=lambda c: f"U+{ord(c):04X}")
def test_only_newline_ends_a_line_and_a_control_character_in_a_value_is_refused(tmp_path, separator):
    producer = f"# the file\nSHIPPER_FILE=/a{separator}NATS_URL=nats://evil:4222\n"
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, files={**BASE, "producer.env": producer})
    message = str(refused.value)
    # Line 2 is SHIPPER_FILE's; NATS_URL was not read as a key of its own.
    assert message.startswith(f"{tmp_path}/producer.env:2: SHIPPER_FILE: "), message
    assert f"U+{ord(separator):04X}" in message and "control character" in message, message
    assert message.isprintable(), "one printable line, the character named, not shown"


@pytest.mark.parametrize("separator", [c for c in NOT_LINE_ENDS if c != "\r"], ids=lambda c: f"U+{ord(c):04X}")
def test_a_comment_runs_to_the_newline_whatever_it_holds(tmp_path, separator):
    fshipper = BASE["fshipper.env"] + f"# note{separator}NATS_URL=nats://evil:4222\n"
    settings = load(tmp_path, files={**BASE, "fshipper.env": fshipper}).settings
    assert settings.nats_url == ("nats://n1:4222", "nats://n2:4222")


def test_a_carriage_return_inside_a_comment_is_refused_as_systemd_would_split_there(tmp_path):
    fshipper = BASE["fshipper.env"] + "# note\rNATS_URL=nats://evil:4222\n"
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/fshipper.env:3: a carriage return inside a comment"):
        load(tmp_path, files={**BASE, "fshipper.env": fshipper})


def test_crlf_files_read_like_lf_files(tmp_path):
    files = {name: text.replace("\n", "\r\n") for name, text in BASE.items()}
    files["producer.env"] += "HOSTNAME='web1'\r\n# comment\r\n\r\n"
    loaded = load(tmp_path, files=files)
    assert loaded.settings.shipper_file == "/var/log/app.log" and loaded.settings.hostname == "web1"
    assert loaded.sources["HOSTNAME"] == f"{tmp_path}/producer.env:2"


@pytest.mark.parametrize("value", ["/var/log/a\tb", "/var/log/a\x00b", "/var/log/a\x7fb", "/var/log/a\x9bb"])
def test_control_characters_inside_a_quoted_value_are_refused(tmp_path, value):
    with pytest.raises(ConfigError, match=r"producer.env:1: SHIPPER_FILE: the value holds the control character"):
        load(tmp_path, files={**BASE, "producer.env": f'SHIPPER_FILE="{value}"\n'})


def test_unicode_blanks_are_not_stripped_like_spaces(tmp_path):
    # A no-break space is not a blank: it stays in the value and the value is refused.
    with pytest.raises(ConfigError, match=r"fshipper.env:2: SHIPPER_SUBJECT='logs\\xa0'"):
        load(tmp_path, files={**BASE, "fshipper.env": "NATS_URL=nats://n1\nSHIPPER_SUBJECT=logs\u00a0\n"})
    # ASCII blanks around a value are.
    loaded = load(tmp_path, files={**BASE, "fshipper.env": "NATS_URL=nats://n1\nSHIPPER_SUBJECT= \tlogs \t\n"})
    assert loaded.settings.shipper_subject == "logs"


def test_a_control_character_from_the_environment_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^environment: NATS_URL: the value holds the control character U\+000A"):
        load(tmp_path, files=BASE, environ={"NATS_URL": "nats://n1:4222\nnats://evil:4222"})


# --- numbers: ASCII digits only ----------------------------------------------------

NUMERIC = [  # (role, key, a valid value, what it becomes)
    ("producer", "SHIPPER_PARTITIONS", "5", 5),
    ("producer", "SHIPPER_MAX_INFLIGHT", "5", 5),
    ("consumer", "SHIPPER_KEEP_DAYS", "5", 5),
    ("consumer", "SHIPPER_FETCH_BATCH", "5", 5),
    ("consumer", "SHIPPER_MAX_OPEN_FILES", "5", 5),
    ("consumer", "SHIPPER_STREAM_REPLICAS", "5", 5),
    ("producer", "SHIPPER_ROTATE_WAIT", "5s", 5),
    ("consumer", "SHIPPER_GAP_TIMEOUT", "5m", 300),
    ("consumer", "SHIPPER_STREAM_MAX_AGE", "5h", 5 * 3600),
    ("consumer", "SHIPPER_STREAM_DUPLICATE_WINDOW", "5d", 5 * 86400),
    ("producer", "SHIPPER_BATCH_BYTES", "5K", 5 * 1024),
    ("consumer", "SHIPPER_STREAM_MAX_BYTES", "5G", 5 * 1024 ** 3),
]
# Each is what int() or float() (or re's \d, \s) would take for "5"; a tab is a
# control character, refused before any converter sees it.
NOT_ASCII_FIVE = ["\u0665", "\uff15", "\U0001d7d3", "+5", "05_0", " 5", "5 ", "5\u00a0", "0x5", "5e0"]


@pytest.mark.parametrize("role, key, valid, number", NUMERIC, ids=[n[1] for n in NUMERIC])
def test_numbers_take_ascii_digits_only(tmp_path, role, key, valid, number):
    assert getattr(load(tmp_path, role, BASE, environ={key: valid}).settings, key.lower()) == number
    for bad in NOT_ASCII_FIVE:
        value = valid.replace("5", bad)
        with pytest.raises(ConfigError) as refused:
            load(tmp_path, role, BASE, environ={key: value})
        message = str(refused.value)
        assert message.startswith(f"environment: {key}={ascii(value)}: expected "), message
        assert message.isprintable(), message


@pytest.mark.parametrize("key, value", [("SHIPPER_BATCH_BYTES", "5\u212a"),    # Kelvin sign, lower() is "k"
                                        ("SHIPPER_ROTATE_WAIT", "5\u017f"),    # long s, IGNORECASE matches "s"
                                        ("SHIPPER_LOG_LEVEL", "\u0130nfo"),  # dotted I
                                        ("SHIPPER_ROTATE_WAIT", "5 s")])
def test_units_and_choices_are_ascii_too(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        load(tmp_path, files=BASE, environ={key: value})


def test_lists_of_partitions_allow_blanks_around_items_and_stay_in_range(tmp_path):
    c = load(tmp_path, "consumer", BASE, environ={"SHIPPER_READ_PARTITIONS": " 2, 0 , 1,,2 ",
                                                  "SHIPPER_PARTITIONS": "3"}).settings
    assert c.shipper_read_partitions == (0, 1, 2)
    for bad in ("0,1_0", "0,+1", "0,\u0661", "1000", "-1"):
        with pytest.raises(ConfigError, match="SHIPPER_READ_PARTITIONS"):
            load(tmp_path, "consumer", BASE, environ={"SHIPPER_READ_PARTITIONS": bad})


@pytest.mark.parametrize("key, value", [("SHIPPER_KEEP_DAYS", "9" * 5000),
                                        ("SHIPPER_STREAM_MAX_AGE", "9" * 400 + "d"),
                                        ("SHIPPER_STREAM_MAX_AGE", "36501d"),
                                        ("SHIPPER_STREAM_MAX_BYTES", "9999999T")])
def test_numbers_beyond_what_the_server_takes_are_refused_with_the_usual_error(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"^environment: {key}=.*: expected "):
        load(tmp_path, "consumer", BASE, environ={key: value})


@pytest.mark.parametrize("port", ["\u0664222", "+4222", " 4222", "4_222", "04222x"])
def test_nats_url_ports_are_ascii_digits(tmp_path, port):
    with pytest.raises(ConfigError, match="invalid port"):
        load(tmp_path, files=BASE, environ={"NATS_URL": f"nats://n1:{port}"})


# --- HOSTNAME: the consumer's rule ----------------------------------------------------

# (host, safe): a host name the consumer refuses in a subject, the producer refuses as HOSTNAME.
HOSTS = [("web1", True), ("web1.example.net", True), ("db-2.prod", True), ("host_1", True), ("A1", True),
         ("a-", True), ("10.0.0.1", True), ("x" * 253, True),
         ("a/b", False), ("-rf", False), ("web1.-rf", False), (".hidden", False), ("..", False),
         ("a..b", False), ("a.", False), ("w\u0435b1", False),  # a Cyrillic "е"
         ("\uff57eb1", False), ("web1\u200b", False), ("x" * 254, False), ("x" * 300, False),
         (" web1", False), ("a b", False), ("a*", False), ("a>", False), ("~root", False),
         ("a\\b", False), ("a:b", False), ("/etc", False)]


@pytest.mark.parametrize("host, safe", HOSTS, ids=[ascii(h[:20]) for h, _ in HOSTS])
def test_the_producer_takes_a_host_name_exactly_when_the_consumer_does(tmp_path, host, safe):
    assert wire.safe_host(host) is safe
    if safe:
        assert load(tmp_path, files=BASE, environ={"HOSTNAME": host}).settings.hostname == host
    else:
        with pytest.raises(ConfigError, match=r"^environment: HOSTNAME=.*: expected a host name of ASCII"):
            load(tmp_path, files=BASE, environ={"HOSTNAME": host})


# --- secrets in NATS_URL ---------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("nats://user:pass@host:4222", "nats://user:***@host:4222"),
    ("nats://token@host", "nats://***@host"),
    ("user:pass@host", "user:***@host"),                        # nats:// implied
    ("nats://n1:4222,tls://u:p@n2:4222", "nats://n1:4222,tls://u:***@n2:4222"),
    ("nats://u:p@h1, nats://t@h2", "nats://u:***@h1, nats://***@h2"),
    ("nats://u:pa/ss@host", "nats://u:***@host"),                # broken URLs keep their secret too
    ("nats://u:p@ss@host:1", "nats://u:***@host:1"),
    ("nats://u:a://b@host", "nats://u:***@host"),
    ("nats://host:4222", "nats://host:4222"),
])
def test_redact_url_hides_passwords_and_tokens(url, shown):
    assert config.redact_url(url) == shown


def test_check_config_lines_and_errors_show_nats_url_redacted(tmp_path):
    url = "nats://shipper:s3cret@n1:4222,nats://t0ken@n2:4222"
    loaded = load(tmp_path, files=BASE, environ={"NATS_URL": url})
    assert loaded.settings.nats_url == ("nats://shipper:s3cret@n1:4222", "nats://t0ken@n2:4222")
    lines = config.describe(loaded)
    assert "NATS_URL=nats://shipper:***@n1:4222,nats://***@n2:4222  # environment" in lines
    for bad in ("nats://shipper:s3cret@n1:99999", "http://shipper:s3cret@n1", "nats://shipper:s3/cret@n1:4222"):
        with pytest.raises(ConfigError) as refused:
            load(tmp_path, files=BASE, environ={"NATS_URL": bad})
        assert "s3" not in str(refused.value) and "cret" not in str(refused.value), str(refused.value)
        assert "shipper:***@" in str(refused.value)


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
    assert config.redact_url(url) == shown
