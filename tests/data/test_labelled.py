"""Labelled text: CSV/TSV/JSONL readers, stratified splits, class weights, padding and truncation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt import MiniGPTError
from minigpt.data.labelled import EncodedTexts, LabelledText, class_weights, label_map, read_labelled, stratified_split
from minigpt.data.padding import LongText, pad, truncate
from minigpt.data.tokenizers import CharTokenizer

REPO_DATA = Path(__file__).resolve().parents[2] / "data"



def test_reads_the_bundled_sms_spam_collection_completely():
    data = read_labelled(REPO_DATA / "sms_spam" / "SMSSpamCollection", text_column=1, label_column=0, fmt="tsv", header=False)
    assert len(data.texts) == 5574 and data.labels.count("spam") == 747 and data.labels.count("ham") == 4827
    assert label_map(data.labels) == ["ham", "spam"]


def test_csv_tsv_jsonl_and_bad_rows(tmp_path):
    (tmp_path / "a.csv").write_text('label,review\n1,"good, really ""good"""\n0,bad\n0,\n', encoding="utf-8")
    with pytest.raises(MiniGPTError, match=r"a.csv:4: missing text"):
        read_labelled(tmp_path / "a.csv", "review", "label")
    data = read_labelled(tmp_path / "a.csv", "review", "label", skip_bad_rows=True)
    assert data.texts == ['good, really "good"', "bad"] and data.skipped == [4]
    with pytest.raises(MiniGPTError, match=r"no text column 'text'; the columns are \['label', 'review'\]"):
        read_labelled(tmp_path / "a.csv")
    (tmp_path / "b.tsv").write_text("sentence\tlabel\nit 's fine \t1\n", encoding="utf-8")
    assert read_labelled(tmp_path / "b.tsv", "sentence", "label").texts == ["it 's fine"]
    (tmp_path / "c.jsonl").write_text('{"text": "hi", "label": "greet"}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(MiniGPTError, match=r"c.jsonl:2: no key 'label'"):
        read_labelled(tmp_path / "c.jsonl")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(MiniGPTError, match="empty"):
        read_labelled(tmp_path / "empty.csv")
    with pytest.raises(MiniGPTError, match="at least 2 classes"):
        label_map(["spam", "spam"])
    with pytest.raises(MiniGPTError, match="not among the known classes"):
        label_map(["a", "b", "c"], given=["a", "b"])


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = ["a"] * 700 + ["b"] * 300
    train, val, test = stratified_split(labels, (0.7, 0.1, 0.2), seed=1)
    assert sorted(train + val + test) == list(range(1000))
    for part, size in ((train, 700), (val, 100), (test, 200)):
        assert len(part) == size and sum(labels[i] == "b" for i in part) == round(0.3 * size)
    assert stratified_split(labels, (0.7, 0.1, 0.2), seed=1)[2] == test


def test_class_weights_match_scikit_learn():
    utils = pytest.importorskip("sklearn.utils")
    y = [0] * 50 + [1] * 10 + [2] * 40
    ref = utils.class_weight.compute_class_weight("balanced", classes=np.arange(3), y=np.array(y))
    assert class_weights(y, 3).tolist() == pytest.approx(ref.tolist())


def test_pad_and_truncate_head_or_tail():
    ids, mask = pad(truncate([[1, 2, 3, 4, 5], [6]], max_length=3))
    assert ids.tolist() == [[1, 2, 3], [6, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, _ = pad(truncate([[1, 2, 3, 4, 5]], max_length=3, keep="tail"))
    assert ids.tolist() == [[3, 4, 5]]
    ids, mask = pad([[1, 2, 3], [6]], side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 6]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(MiniGPTError, match="truncate must be one of head, tail, head_tail"):
        truncate([[1]], 1, keep="middle")


def test_long_texts_are_truncated_to_max_length_and_counted():
    data = LabelledText(["a" * 100, "b" * 3], ["x", "y"], "mem", [1, 2])
    enc = EncodedTexts(data, CharTokenizer(["a", "b"]), ["x", "y"], LongText(10, "tail"))
    ids, mask, labels, _ = enc.batch([0, 1], torch.device("cpu"))
    assert enc.n_truncated == 1 and ids.shape == (2, 10) and mask.sum().item() == 13 and labels.tolist() == [0, 1]


def test_a_quoted_csv_field_may_hold_newlines_and_errors_name_the_physical_line(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('text,label\n"first line\nsecond line",x\n"one\n\ntwo\n",y\nplain,x\n,y\n', encoding="utf-8")
    with pytest.raises(MiniGPTError, match=r"a.csv:9: missing text"):  # the 4th record starts on line 9
        read_labelled(path)
    data = read_labelled(path, skip_bad_rows=True)
    assert data.texts == ["first line\nsecond line", "one\n\ntwo", "plain"] and data.lines == [2, 4, 8]
    assert data.skipped == [9]


def test_u2028_inside_a_tsv_text_does_not_split_the_row(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("x\tline one\u2028still one\ny\ttwo\n", encoding="utf-8")
    data = read_labelled(path, text_column=1, label_column=0, header=False)
    assert data.texts == ["line one\u2028still one", "two"]


def test_several_text_columns_are_joined_and_pairs_get_the_end_of_text_token(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("title,description,label\nRain,Wet week ahead,weather\nGoal,Late winner,sport\n", encoding="utf-8")
    data = read_labelled(path, "title,description", "label", separator=" - ")
    assert data.texts == ["Rain - Wet week ahead", "Goal - Late winner"]
    assert data.parts == [("Rain", "Wet week ahead"), ("Goal", "Late winner")]
    from minigpt.data.tokenizers import EOT_TEXT, GPT2Tokenizer

    tok = GPT2Tokenizer()
    pairs = read_labelled(path, "title,description", "label", separator=EOT_TEXT)
    encoded = EncodedTexts(pairs, tok, ["sport", "weather"], LongText(32))
    assert encoded.ids[0] == tok.encode("Rain") + [tok.eot_token] + tok.encode("Wet week ahead")
    with pytest.raises(MiniGPTError, match="needs a tokenizer with an end-of-text token"):
        EncodedTexts(pairs, CharTokenizer.from_text("RainWetweekaheadGoalLatewinner "), ["sport", "weather"], LongText(32))


def test_skipped_rows_are_counted_aloud(tmp_path, caplog):
    path = tmp_path / "a.csv"
    path.write_text("text,label\ngood,x\n,y\nfine,\nok,y\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="minigpt"):
        data = read_labelled(path, skip_bad_rows=True)
    assert data.skipped == [3, 4]
    assert "a.csv: skipped 2 rows with a missing text or label (lines 3, 4)" in caplog.text
