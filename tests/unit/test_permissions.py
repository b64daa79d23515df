"""`fshipper permissions`: what each role is allowed, from the same settings it runs with."""

from fshipper import config, permissions, wire

BASE = {"NATS_URL": "nats://n1:4222", "SHIPPER_SUBJECT": "logs.prod", "SHIPPER_PARTITIONS": "8",
        "SHIPPER_OUTPUT": "/var/log/central/x"}


def admin(**extra):
    return config.load("admin", None, "/nonexistent", dict(BASE, **extra)).settings


def test_a_producer_may_publish_its_own_subject_and_read_its_own_inbox_only():
    host = "web1.example.net"
    allowed = permissions.producer(admin(), host)
    assert allowed == {"publish": {"allow": [f"logs.prod.p{wire.partition(host, 8)}.{host}"]},
                       "subscribe": {"allow": ["_INBOX_host_web1_example_net.>"]}}
    # the subject is the producer's own, partition included
    producer = config.load("producer", None, "/nonexistent", dict(BASE, HOSTNAME=host, SHIPPER_FILE="/x"))
    assert allowed["publish"]["allow"] == [wire.subject("logs.prod", host, producer.settings.shipper_partitions)]
    assert allowed["subscribe"]["allow"] == [f"{producer.settings.inbox_prefix}.>"]


def test_the_consumer_may_use_its_stream_only():
    allowed = permissions.consumer(admin(SHIPPER_STREAM="LOGS"))
    assert allowed["subscribe"] == {"allow": ["_INBOX_consumer.>"]}
    assert all(".LOGS" in s for s in allowed["publish"]["allow"]), allowed
    assert "$JS.API.CONSUMER.MSG.NEXT.LOGS.*" in allowed["publish"]["allow"]
    assert "$JS.ACK.LOGS.>" in allowed["publish"]["allow"]


def test_a_core_mode_consumer_subscribes_to_the_subjects():
    allowed = permissions.consumer(admin(SHIPPER_MODE="core", NATS_INBOX_PREFIX="_INBOX_central"))
    assert allowed == {"publish": {"allow": []}, "subscribe": {"allow": ["logs.prod.>", "_INBOX_central.>"]}}
