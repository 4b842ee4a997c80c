"""The summary table's cells: quality columns per task (from each task's recipe), and the delta's size against a full
model copy."""

from tunelab.report import on_disk, quality_columns


def test_classification_shows_accuracy_and_macro_f1():
    assert quality_columns({"test": {"accuracy": 0.8451, "macro_f1": 0.8449}}, "classification") == ("0.845", "0.845")


def test_generation_shows_loss_and_perplexity_next_to_the_base_model():
    metrics = {"test": {"loss": 4.127, "perplexity": 62.0}, "base_test": {"loss": 4.877, "perplexity": 131.2}}
    assert quality_columns(metrics, "generation") == ("loss 4.127 (base 4.877)", "ppl 62.00 (base 131.20)")


def test_on_disk_gives_the_share_of_a_full_copy():
    assert on_disk({"delta_bytes": 682_884, "full_copy_bytes": 90_870_000}) == "682.9 KB (0.75% of full)"
    assert on_disk({"delta_bytes": 3_288}) == "3.3 KB"  # a run written before full_copy_bytes existed


def test_sizes_are_decimal_like_the_memory_option():
    from tunelab.units import human_bytes

    assert [human_bytes(n) for n in (999, 1000, 1_500_000, 8e9, None)] == ["999 B", "1.0 KB", "1.5 MB", "8.0 GB", "-"]
