# gen_lyrics.py OUT [BYTES] - deterministic multilingual pseudo-lyrics for tokbench (default 1 MB):
# [verse]/[chorus] sections of English, Spanish, Chinese, Japanese and Korean lines.
import random, sys
out, size = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
rng = random.Random(1234)
en = ("love night heart fire dancing under city lights I you we're never gonna stop "
      "walking along the river's edge where willows weep and sway oh don't know coming home "
      "baby tonight forever dreams shining stars 1999 summer rain").split()
es = "corazón noche bailar conmigo señor niño esta vida amor cantar siempre".split()
zh = ["我们一起唱歌", "今天天气很好", "爱你一万年", "夜空中最亮的星", "风吹过"]
ja = ["夜空に輝く星のように", "君を想う", "ありがとう", "さくら"]
ko = ["사랑해요", "오늘 밤은 영원히", "안녕"]
parts, n = [], 0
while n < size:
    sec = rng.choice(["[verse]", "[chorus]", "[bridge]", "[Verse 2]"])
    lines = [sec]
    for _ in range(rng.randint(3, 6)):
        k = rng.random()
        if k < 0.6: line = " ".join(rng.choice(en) for _ in range(rng.randint(4, 9)))
        elif k < 0.75: line = " ".join(rng.choice(es) for _ in range(rng.randint(3, 7)))
        elif k < 0.87: line = "，".join(rng.choice(zh) for _ in range(rng.randint(1, 3)))
        elif k < 0.94: line = rng.choice(ja) + "　" + rng.choice(ja)
        else: line = rng.choice(ko)
        lines.append(line.capitalize() + rng.choice(["", ",", "!", "..."]))
    s = "\n".join(lines) + "\n\n"
    parts.append(s); n += len(s.encode())
data = "".join(parts).encode()[:size]
while True:  # cut on a character boundary
    try: data.decode(); break
    except UnicodeDecodeError: data = data[:-1]
open(out, "wb").write(data)
