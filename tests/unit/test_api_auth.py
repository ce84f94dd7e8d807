"""The lookup API's token check and its partitioning (no services)."""

from __future__ import annotations

from streams.api import bearer_status, user_partition


def test_bearer_token_missing_is_401_wrong_is_403_right_passes() -> None:
    token = "s3cret-token"
    assert bearer_status(None, token) == (401, "unauthorized")
    assert bearer_status("", token) == (401, "unauthorized")
    assert bearer_status(f"Basic {token}", token) == (401, "unauthorized")
    assert bearer_status("Bearer ", token) == (401, "unauthorized")
    assert bearer_status("Bearer s3cret-tokem", token) == (403, "forbidden")
    assert bearer_status("Bearer s3cret", token) == (403, "forbidden")
    assert bearer_status(f"Bearer {token}", token) is None
    assert bearer_status(f"bearer {token}", token) is None
    # No token configured: the API refuses everything, even an empty bearer.
    assert bearer_status("Bearer ", "") == (503, "api_disabled")
    assert bearer_status(f"Bearer {token}", "") == (503, "api_disabled")


def test_user_partition_is_the_partition_kafka_clients_key_to() -> None:
    # Java's murmur2 test vectors (Kafka's UtilsTest): hash -> partition as Java's
    # DefaultPartitioner and librdkafka's murmur2 partitioner compute it.
    vectors = {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
        "a-little-bit-longer-string": -1486304829,
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        "abc": 479470107,
    }
    for key, java_hash in vectors.items():
        for partitions in (1, 2, 4, 12, 7):
            assert user_partition(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions
