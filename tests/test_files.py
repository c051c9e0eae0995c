"""Atomic writes: concurrent writers to one path never mix, fail or leave temporary files behind."""
import threading

from synth.files import atomic, write_text


def test_two_writers_to_one_path_leave_one_whole_file(tmp_path):
    path = tmp_path / "out.txt"
    contents = {"a": "a" * 200_000, "b": "b" * 300_000}
    rounds = 150
    start = threading.Barrier(2)
    done = threading.Barrier(2)
    errors, seen = [], []

    def writer(key: str) -> None:
        for _ in range(rounds):
            start.wait()
            try:
                write_text(path, contents[key])
            except Exception as e:  # noqa: BLE001 - any failure of a writer is what the test looks for
                errors.append(e)
            if done.wait() == 0:  # one thread reads the round's result while both are idle
                seen.append(path.read_text())

    threads = [threading.Thread(target=writer, args=(k,)) for k in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen) == rounds
    assert all(text in contents.values() for text in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    write_text(path, "old")
    try:
        with atomic(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("cut short")
    except RuntimeError:
        pass
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
