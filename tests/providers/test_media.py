"""Images and audio through the real proxy with the official SDK: priced per image (by
model, size and quality, or by tokens), per input character, per second of audio; the worst
case held before forwarding, the call settled from what came back. And the upload readers
(multipart fields, audio durations) as tables."""

from __future__ import annotations

import asyncio
import io
import wave
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from budget_proxy.providers import adapter_for, media
from budget_proxy.usage import Usage

# list prices, typed here (USD)
DALL_E_3_HD_TALL = Decimal("0.120")
DALL_E_2_512 = Decimal("0.018")
DALL_E_2_DEFAULT = Decimal("0.020")
GPT_IMAGE_1 = (Decimal("5.00"), Decimal("40.00"))  # per million tokens: text in, image out
GPT_IMAGE_1_MAX_TOKENS_PER_IMAGE = 6240
TTS_1_PER_CHAR = Decimal("0.000015")
WHISPER_PER_S = Decimal("0.0001")


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return out.getvalue()


def client(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)


async def records(proxy, expected: int) -> list[dict]:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        resp = await proxy.api("GET", "/api/usage/records", params={"limit": 100})
        found = resp.json()
        if len(found) >= expected or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.02)


def cost(rec: dict) -> Decimal:
    return Decimal(str(rec["total_cost"]))


@pytest.fixture
def holds(proxy):
    """The reservations the proxy makes, as (tokens, cost USD, intent)."""
    seen: list = []
    store = proxy.proxy.store
    reserve = store.reserve

    async def spy(reservation, lines, ttl):
        seen.append(reservation)
        return await reserve(reservation, lines, ttl)

    store.reserve = spy
    return seen


async def test_dall_e_3_priced_per_image_by_quality_and_size(proxy, fake, holds):
    answer = await client(proxy).images.generate(
        model="dall-e-3", prompt="a lighthouse", n=2, size="1024x1792", quality="hd")
    assert len(answer.data) == 2
    (rec,) = await records(proxy, 1)
    assert rec["route"] == "images.generations" and rec["model"] == "dall-e-3"
    assert cost(rec) == 2 * DALL_E_3_HD_TALL
    assert rec["metadata"]["images"] == 2 and rec["metadata"]["image_size"] == "1024x1792"
    assert holds[0].cost_nusd == int(2 * DALL_E_3_HD_TALL * 10**9)


async def test_an_image_request_naming_nothing_is_dall_e_2_at_its_default_size(proxy, fake):
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{proxy.url}/v1/images/generations", json={"prompt": "x"})
    assert resp.status_code == 200
    (rec,) = await records(proxy, 1)
    assert (rec["model"], cost(rec)) == ("dall-e-2", DALL_E_2_DEFAULT)


async def test_image_edit_multipart_is_priced_from_its_form(proxy, fake):
    await client(proxy).images.edit(model="dall-e-2", image=("in.png", b"\x89PNG fake"),
                                    prompt="add a hat", n=3, size="512x512")
    assert fake.last.body["n"] == 3 and fake.last.body["file_size"] == 9
    (rec,) = await records(proxy, 1)
    assert rec["route"] == "images.edits"
    assert cost(rec) == 3 * DALL_E_2_512


async def test_gpt_image_is_priced_by_tokens_and_holds_its_cap_per_image(proxy, fake, holds):
    fake.prompt_tokens, fake.completion_tokens = 50, 4160
    await client(proxy).images.generate(model="gpt-image-1", prompt="a cat", n=2)
    intent = orjson.loads(holds[0].intent)
    assert intent["output_tokens"] == 2 * GPT_IMAGE_1_MAX_TOKENS_PER_IMAGE
    (rec,) = await records(proxy, 1)
    assert (rec["input_tokens"], rec["output_tokens"]) == (50, 4160)
    expected = (50 * GPT_IMAGE_1[0] + 4160 * GPT_IMAGE_1[1]) / 1_000_000
    assert cost(rec) == pytest.approx(expected, abs=Decimal("1e-9"))


async def test_speech_is_priced_per_input_character(proxy, fake):
    text = "Hello world, twice: héllo!"
    audio = await client(proxy).audio.speech.create(model="tts-1", voice="alloy", input=text)
    assert audio.content.startswith(b"ID3")
    (rec,) = await records(proxy, 1)
    assert rec["route"] == "audio.speech" and rec["metadata"]["characters"] == len(text)
    assert cost(rec) == len(text) * TTS_1_PER_CHAR


@pytest.mark.parametrize("response_format", ["verbose_json", "text", "json"])
async def test_transcription_is_priced_per_second_of_audio(proxy, fake, holds,
                                                           response_format):
    upload = wav_bytes(2.5)
    await client(proxy).audio.transcriptions.create(
        model="whisper-1", file=("talk.wav", upload), response_format=response_format)
    assert holds[0].cost_nusd == int(Decimal("2.5") * WHISPER_PER_S * 10**9)
    (rec,) = await records(proxy, 1)
    assert rec["route"] == "audio.transcriptions"
    assert rec["metadata"]["audio_seconds"] == 2.5
    assert cost(rec) == Decimal("2.5") * WHISPER_PER_S


async def test_a_reported_duration_settles_an_unreadable_upload(proxy, fake, holds):
    fake.audio_duration_s = 3.2
    upload = b"OggS" + b"\1" * 6000  # no readable duration: held at 6 kbit/s
    await client(proxy).audio.translations.create(
        model="whisper-1", file=("talk.ogg", upload), response_format="verbose_json")
    held_ms = -(-len(upload) * 8000 // 6000)  # whole milliseconds, rounded up
    assert holds[0].cost_nusd == held_ms * WHISPER_PER_S * 10**6
    (rec,) = await records(proxy, 1)
    assert cost(rec) == Decimal("3.2") * WHISPER_PER_S


async def test_a_zero_dollar_limit_refuses_images_and_audio_before_the_provider(proxy, fake):
    resp = await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "cost_limit": 0})
    assert resp.status_code == 201
    api = client(proxy)
    with pytest.raises(openai.RateLimitError):
        await api.images.generate(model="dall-e-3", prompt="x")
    with pytest.raises(openai.RateLimitError):
        await api.audio.speech.create(model="tts-1", voice="alloy", input="x")
    with pytest.raises(openai.RateLimitError):
        await api.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(1)))
    assert fake.requests == []


# the readers ------------------------------------------------------------------------------
def form(*parts: tuple[str, bytes, str | None], boundary: bytes = b"XyZ") -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"'
                                                     if filename else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode()
        out += b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (form(("model", b"whisper-1", None), ("file", b"ab\r\n--Xy\r\ncd", "a.wav")),
         {"model": b"whisper-1", "file": b"ab\r\n--Xy\r\ncd"}),
        (form(("n", b"2", None), ("n", b"9", None)), {"n": b"2"}),  # the first of a name
        (b"", {}),
        (b"{\"model\": \"x\"}", {}),
        (b"--\r\n", {}),
        (b"--XyZ\r\nno headers end", {}),
        (form(("a", b"1", None))[:-10], {}),  # truncated: no closing delimiter
        (form(*[(f"f{i}", b"x", None) for i in range(500)]),
         {f"f{i}": b"x" for i in range(media.MAX_FORM_PARTS)}),
    ],
)
def test_form_fields(raw, expected):
    assert media.form_fields(raw) == expected


def test_form_fields_of_a_huge_upload_are_read_whole():
    big = b"\0" * 20_000_000
    assert media.form_fields(form(("file", big, "a.wav")))["file"] == big


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (wav_bytes(2.5), (2500, 2500)),
        (wav_bytes(1, rate=44100), (1000, 1000)),
        (wav_bytes(0), (0, 0)),
        (b"RIFF\0\0\0\0WAVEdata\x10\0\0\0" + b"\0" * 16, (48, 48)),  # no fmt: the bound
        (b"ID3\3\0\0\0\0\0\0" + b"\xff\xfb\x90\x64" + b"\0" * 15_996, (21_347, 1000)),
        (b"\xff\xfb\xf0\x00" + b"\0" * 100, (139, 139)),  # a bad bitrate index: the bound
        (b"", (0, 0)),
        (b"\x00" * 3000, (4000, 4000)),
    ],
)
def test_audio_durations(data, expected):
    assert media.audio_ms(data) == expected


@pytest.mark.parametrize(
    ("n", "size", "expected"),
    [
        (b"3", b"512x512", (3, "512x512")),
        (b"-1", b"512x512", (1, "512x512")),
        (b"abc", b"512x512", (1, "512x512")),
        (b"99999999999", b"512x512", (1, "512x512")),  # not a count: one image, as OpenAI
        (b"2", b"x" * 40, (2, "1024x1024")),  # not a size: the default size
        (b"2", b"", (2, "1024x1024")),
        (b"\xff\xfe", b"\xff", (1, "\ufffd")),  # bad UTF-8: replaced; the default price
    ],
)
def test_image_edit_form_values(n, size, expected):
    raw = form(("model", b"dall-e-2", None), ("n", n, None), ("size", size, None),
               ("image", b"\x89PNG", "a.png"))
    plan = adapter_for("openai").plan("images.edits", "images/edits", "", raw, None)
    assert (plan.choices, plan.units.image_size) == expected
    assert plan.units.images == expected[0]


@pytest.mark.parametrize(
    ("body", "characters"),
    [({"model": "tts-1", "input": "héllo"}, 5), ({"model": "tts-1", "input": 5}, 0),
     ({"model": "tts-1", "input": "x" * 100_000}, 100_000), ({"model": "tts-1"}, 0)],
)
def test_speech_holds_its_characters(body, characters):
    plan = adapter_for("openai").plan("audio.speech", "audio/speech", "", orjson.dumps(body),
                                      None)
    assert plan.units == Usage(characters=characters)
