// Child process for crash tests (not a test file itself): does one storage job and is killed
// with SIGKILL by its parent, or kills itself at a named step (CRASH_AT) of a rotation.
// Usage: node club-crash-child.js <job> <dataDir> [clubId]
import { Readable } from 'node:stream';
import { openStorage } from '../storage/server/storage.js';
import { rotateClub, rotateMaster } from '../storage/server/key-rotation.js';
import { putDocument } from '../storage/club/documents.js';

const [job, dataDir, clubId] = process.argv.slice(2) as [string, string, string];
const crashAt = process.env.CRASH_AT;
const onStep = (step: string) => {
  if (step === crashAt) process.kill(process.pid, 'SIGKILL');
};
const say = (s: string) => process.stdout.write(s + '\n');

const st = await openStorage({ dataDir });
if (job === 'writer') {
  // Batches of 50 persons, one transaction each; "ack N" only after the commit returned.
  const ins = () => st.openClub(clubId).db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", "blocked", "notes") VALUES (?, ?, 0, 0, ?)`);
  for (let batch = 1; ; batch++) {
    const db = st.openClub(clubId).db;
    const stmt = ins();
    db.transaction(() => {
      for (let i = 0; i < 50; i++) stmt.run(`B${batch}`, `Row${i}`, 'x'.repeat(500));
    })();
    say(`ack ${batch}`);
    if (batch % 20 === 0) await new Promise((r) => setImmediate(r));
  }
} else if (job === 'doc-writer') {
  // Document n has 64 KiB * n of byte n. The last one is streamed slowly and never finishes.
  for (let n = 1; ; n++) {
    const slow = n === 4;
    const src = Readable.from(
      (async function* () {
        for (let i = 0; i < n; i++) {
          yield Buffer.alloc(65536, n);
          if (slow) {
            say(`streaming ${n}`);
            await new Promise((r) => setTimeout(r, 200));
          }
        }
        if (slow) await new Promise(() => undefined);
      })(),
    );
    const info = await putDocument(st, clubId, src, { kind: 'other', name: `doc${n}` });
    say(`ack ${n} ${info.id}`);
  }
} else if (job === 'rotate-club') {
  await rotateClub(st, clubId, { onStep });
  say('done');
} else if (job === 'rotate-master') {
  await rotateMaster(st, { onStep });
  say('done');
}
st.close();
