"""SHIPPER_METRICS_LISTEN: both daemons' Prometheus endpoints, scraped while
numbered lines go through, count exactly the lines and bytes that arrived."""

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from harness import append_numbered, free_port, verdict, wait_until


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def test_counters_match_the_numbered_lines_shipped(pipeline):
    producer_port, consumer_port = free_port(), free_port()
    p = pipeline(SHIPPER_METRICS_LISTEN=f"127.0.0.1:{consumer_port}")
    with open(p.config / "producer.env", "a") as env:
        env.write(f"SHIPPER_METRICS_LISTEN=127.0.0.1:{producer_port}\n")
    p.consumer.start()
    p.wait_consuming()
    p.producer.start()
    wait_until(lambda: "metrics: serving" in p.producer.tail(), 20, p.logs)
    expected = 1
    for batch in (1000, 2500):   # a scrape after each: counters keep counting
        expected = append_numbered(p.log, expected, batch, width=40)
        size = p.log.stat().st_size
        wait_until(lambda: scrape(consumer_port).get("fshipper_consumer_lines_total") == expected - 1, 30,
                   lambda: f"the consumer's line count {scrape(consumer_port)}\n{p.logs()}")
        produced = wait_until(lambda: (lambda m: m if m["fshipper_producer_lag_bytes"] == 0 else None)(
            scrape(producer_port)), 20, lambda: f"no lag: {scrape(producer_port)}")
        consumed = scrape(consumer_port)
        assert produced["fshipper_producer_lines_total"] == expected - 1, produced
        assert produced["fshipper_producer_bytes_total"] == size, produced
        assert produced["fshipper_producer_confirmed_position_bytes"] == size
        assert produced["fshipper_producer_last_confirmation_timestamp_seconds"] > 0
        assert produced["fshipper_producer_file_readable"] == 1 and produced["fshipper_producer_nats_connected"] == 1
        assert consumed["fshipper_consumer_bytes_total"] == size, consumed
        assert consumed["fshipper_consumer_paused_partitions"] == 0 and consumed["fshipper_consumer_open_files"] >= 1
        assert consumed["fshipper_consumer_write_errors_total"] == 0
        assert consumed["fshipper_consumer_gaps_total"] == 0 and consumed["fshipper_consumer_refusals_total"] == 0
    result = verdict(p.output(), range(1, expected))
    assert (result["lost"], result["duplicated"], result["reordered"]) == (0, 0, 0), result
    assert len(p.output()) == p.log.stat().st_size
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{producer_port}/other", timeout=5)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404
