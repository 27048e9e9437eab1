"""When a manager defragments its etcd member."""

from shoal.store.housekeeping import MIN_SIZE, needs_defrag


def test_small_files_are_left_alone() -> None:
    assert not needs_defrag({"db_size": MIN_SIZE // 2, "db_size_in_use": 0})


def test_mostly_free_large_file_is_defragmented() -> None:
    assert needs_defrag({"db_size": 4 * MIN_SIZE, "db_size_in_use": MIN_SIZE})
    assert not needs_defrag({"db_size": 4 * MIN_SIZE, "db_size_in_use": 3 * MIN_SIZE})
