// HF tokenizers (Rust, via the official node binding) on the same inputs as tokbench.
const {Tokenizer} = require('tokenizers');
const fs = require('fs');
const [tokpath, textpath] = process.argv.slice(2);
let loads = [];
let tok;
for (let r = 0; r < 5; r++) { const t0 = process.hrtime.bigint(); tok = Tokenizer.fromFile(tokpath); loads.push(Number(process.hrtime.bigint() - t0) / 1e6); }
loads.sort((a, b) => a - b);
console.log(`HF load: best ${loads[0].toFixed(1)} ms, median ${loads[2].toFixed(1)} ms`);
const text = fs.readFileSync(textpath, 'utf8');
(async () => {
  let best = 1e30, n = 0;
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    const e = await tok.encode(text, null, {addSpecialTokens: false});
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    n = e.getIds().length; best = Math.min(best, dt);
  }
  const bytes = Buffer.byteLength(text);
  console.log(`HF encode: ${bytes} bytes -> ${n} ids in ${(best*1e3).toFixed(1)} ms: ${(bytes/best/1e6).toFixed(1)} MB/s`);
  if (process.argv[4]) { const e = await tok.encode(text, null, {addSpecialTokens: false}); fs.writeFileSync(process.argv[4], Array.from(e.getIds()).join(' ') + '\n'); }
})();
