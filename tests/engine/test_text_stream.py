from server.engine.text_stream import TextStream, TokenTexts


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    out = [stream.push(p) for p in pieces]
    out.append(stream.finish())
    return out


def test_plain_text_passes_through_piece_by_piece() -> None:
    stream = TextStream()
    assert feed(stream, [b"Hello", b",", b" world"]) == ["Hello", ",", " world", ""]


def test_multibyte_character_split_across_tokens_is_emitted_whole() -> None:
    euro = "€".encode()  # three bytes
    emoji = "🙂".encode()  # four bytes
    stream = TextStream()
    out = feed(stream, [b"a" + euro[:1], euro[1:2], euro[2:] + emoji[:3], emoji[3:]])
    assert out == ["a", "", "€", "🙂", ""]
    assert all("\ufffd" not in part for part in out)


def test_invalid_bytes_become_replacement_characters_not_errors() -> None:
    stream = TextStream()
    assert stream.push(b"\xff") == "\ufffd"


def test_incomplete_character_at_the_end_is_flushed_as_replacement() -> None:
    stream = TextStream()
    assert stream.push("€".encode()[:2]) == ""
    assert stream.finish() == "\ufffd"


def test_stop_string_inside_one_piece_cuts_the_text() -> None:
    stream = TextStream(stop=["END"])
    assert stream.push(b"abcENDdef") == "abc"
    assert stream.stopped
    assert stream.push(b"more") == ""
    assert stream.finish() == ""


def test_stop_string_split_across_pieces_is_never_emitted() -> None:
    stream = TextStream(stop=["###"])
    out = feed(stream, [b"one #", b"#", b"# two"])
    assert "".join(out) == "one "
    assert stream.stopped


def test_partial_stop_prefix_is_released_when_it_does_not_complete() -> None:
    stream = TextStream(stop=["</answer>"])
    assert stream.push(b"x </ans") == "x "
    assert stream.push(b"wer") == ""
    assert stream.push(b"ed") == "</answered"
    assert not stream.stopped


def test_partial_stop_prefix_is_flushed_at_the_end() -> None:
    stream = TextStream(stop=["\n\n"])
    assert stream.push(b"last line\n") == "last line"
    assert stream.finish() == "\n"


def test_earliest_of_several_stop_strings_wins() -> None:
    stream = TextStream(stop=["cat", "bird"])
    assert stream.push(b"a bird and a cat") == "a "
    assert stream.matched_stop == "bird"


def test_the_stop_string_that_matched_is_known_only_once_stopped() -> None:
    stream = TextStream(stop=["###", "END"])
    stream.push(b"one #")
    assert stream.matched_stop is None
    stream.push(b"##")
    assert stream.matched_stop == "###"


def test_stop_string_made_of_multibyte_characters() -> None:
    stop = "→→"
    data = ("go " + stop + " on").encode()
    stream = TextStream(stop=[stop])
    out = feed(stream, [data[i : i + 1] for i in range(len(data))])
    assert "".join(out) == "go "


def test_empty_stop_strings_are_ignored() -> None:
    stream = TextStream(stop=[""])
    assert stream.push(b"text") == "text"


def _aligned(pieces: list[bytes], stop: list[str]) -> tuple[str, list[str]]:
    """Run pieces through a TextStream and TokenTexts as the scheduler does."""
    stream, texts = TextStream(stop), TokenTexts()
    out: list[str] = []
    tokens: list[str] = []
    for i, piece in enumerate(pieces):
        texts.add(i, piece, -1.0, ())
        out.append(stream.push(piece))
        if stream.stopped:
            break
        tokens += [t.text for t in texts.release(stream.emitted)]
    if not stream.stopped:
        out.append(stream.finish())
    tokens += [t.text for t in texts.finish(stream.emitted)]
    return "".join(out), tokens


def test_token_texts_join_to_the_text_across_split_characters() -> None:
    euro = "€".encode()
    text, tokens = _aligned([b"a" + euro[:1], euro[1:2], euro[2:] + b"b", b"c"], [])
    assert text == "a€bc"
    assert tokens == ["a", "", "€b", "c"]


def test_token_texts_are_cut_where_a_stop_string_starts() -> None:
    text, tokens = _aligned([b"Hello", b" wor", b"ld\n\nmore"], ["\n\n"])
    assert text == "Hello world"
    assert tokens == ["Hello", " wor", "ld"]


def test_token_texts_include_an_unfinished_character_at_the_end() -> None:
    text, tokens = _aligned([b"ok", "🙂".encode()[:2]], [])
    assert text == "ok\ufffd"
    assert "".join(tokens) == text
