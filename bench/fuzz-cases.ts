/**
 * The fuzzer's cases: a mutated ClientHello, a session with mutated messages, payloads, streams and
 * tampered records, and the ban check from a fresh address; each returns what the daemon did.
 */
import { ClientSession, type ClientEvent } from '../protocol/client-session.js';
import { CLIENT_HELLO_LEN, MAX_CHUNK_LEN, MAX_RECORD_PLAINTEXT, RECORD_CLOSE, RECORD_DATA, RECORD_FINISHED, RECORD_HEADER_LEN, RECORD_KEY_UPDATE } from '../protocol/constants.js';
import { encodeMessage, type Message } from '../protocol/messages.js';
import { FUZZ_ADMIN, FUZZ_PASSWORD, type FromTarget, type ToTarget } from './fuzz-shared.js';
import { Rng, mutate, randomMap, randomValue } from './fuzz-inputs.js';
import { ANSWER_TIMEOUT_MS, HTTP_PROBE, Outcome, REFUSED_BANNED, Session, Wire, flushAndSettle, handshake, sealData } from './fuzz-wire.js';

/** A failing case, with its inputs as hex (one string per frame). */
export interface FuzzFailure {
  kind: 'internal' | 'no-answer' | 'exit' | 'not-banned' | 'bad-error-text' | 'client-error' | 'fault';
  caseKind: string;
  note: string;
  /** The inputs of the case, one hex string per frame. */
  inputs: string[];
}

// ---- the cases ------------------------------------------------------------------------------

export type CaseKind = 'hello' | 'message' | 'payload' | 'stream' | 'record' | 'ban';

export interface CaseResult {
  frames: number;
  failures: FuzzFailure[];
  errorCodes: string[];
  refused: boolean;
  banCheck?: boolean;
}

export interface Ctx {
  port: number;
  fingerprint: string;
  club: string;
  commands: string[];
  askTarget: (m: ToTarget) => Promise<Extract<FromTarget, { type: 'reply' }>>;
}

const TEMPLATES: ((rng: Rng, ctx: Ctx) => Message)[] = [
  () => ({ kind: 'request', id: 1, command: 'ping', payload: {}, stream: false }),
  (rng) => ({ kind: 'request', id: rng.int(100), command: 'ping', payload: { data: rng.bytes(rng.size(MAX_CHUNK_LEN)) }, stream: false }),
  () => ({ kind: 'request', id: 2, command: 'server.info', payload: {}, stream: false }),
  (rng, ctx) => ({ kind: 'request', id: rng.int(100), command: rng.pick(ctx.commands), payload: randomMap(rng), stream: rng.chance(0.1) }),
  (rng) => ({ kind: 'chunk', id: rng.int(4), data: rng.bytes(1 + rng.size(1000)) }),
  (rng) => ({ kind: 'credit', id: rng.int(4), bytes: 1 + rng.int(1 << 20) }),
  (rng) => ({ kind: 'end', id: rng.int(4) }),
  (rng) => ({ kind: 'cancel', id: rng.int(4) }),
  (rng) => ({ kind: 'response', id: rng.int(4), payload: {}, stream: false }),
  (rng) => ({ kind: 'notice', event: 'x', payload: randomValue(rng) }),
];

function checkAnswers(o: Outcome, caseKind: CaseKind, inputs: string[], out: CaseResult): void {
  for (const a of o.answers) {
    if (a.kind !== 'error') continue;
    out.errorCodes.push(a.code);
    if (a.code === 'INTERNAL') out.failures.push({ kind: 'internal', caseKind, note: `INTERNAL answered to request ${a.id}`, inputs });
    if (a.message.length > 256) out.failures.push({ kind: 'bad-error-text', caseKind, note: `error text of ${a.message.length} characters`, inputs });
  }
  for (const e of o.events) {
    if (e.type === 'error' && e.error.code !== 'BAD_RECORD_MAC' && e.error.code !== 'TRUNCATED') {
      // The daemon sent something our client refuses: a malformed answer.
      out.failures.push({ kind: 'client-error', caseKind, note: `the client refused the daemon's output: ${e.error.code} (${e.error.message})`, inputs });
    }
  }
}

export async function caseHello(rng: Rng, ctx: Ctx, ip: string): Promise<CaseResult> {
  const client = new ClientSession({ acceptServerKey: () => true });
  client.start();
  const valid = Buffer.concat(client.takeOutput());
  // Mostly keep the magic so the handshake parser, not the classifier, sees the mutation.
  let bytes = mutate(rng, rng.chance(0.8) ? valid.subarray(4) : valid);
  if (bytes.length < CLIENT_HELLO_LEN + 64 && rng.chance(0.8)) bytes = Buffer.concat([valid.subarray(0, 4), bytes]);
  const out: CaseResult = { frames: 1, failures: [], errorCodes: [], refused: false };
  const wire = await Wire.open(ctx.port, ip);
  if (wire.closed) return { ...out, refused: true };
  wire.write(bytes);
  wire.socket.end();
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  while (!wire.closed && Date.now() < deadline) await wire.wait(1000);
  if (!wire.closed) out.failures.push({ kind: 'no-answer', caseKind: 'hello', note: 'the daemon neither answered nor closed', inputs: [bytes.toString('hex')] });
  wire.destroy();
  return out;
}

export async function caseSession(kind: 'message' | 'payload' | 'stream' | 'record', rng: Rng, ctx: Ctx, ip: string): Promise<CaseResult> {
  const out: CaseResult = { frames: 0, failures: [], errorCodes: [], refused: false };
  const s = await handshake(ctx.port, ctx.fingerprint, ip);
  if (s === 'refused') return { ...out, refused: true };
  const inputs: string[] = [];
  try {
    if (kind === 'payload') {
      const login = encodeMessage({ kind: 'request', id: 900, command: 'auth.login', payload: { club: ctx.club, user: FUZZ_ADMIN, password: FUZZ_PASSWORD }, stream: false });
      sealData(s, login);
      // Logged in before the payloads go out (requests run concurrently).
      const o = await flushAndSettle(s, 900, false);
      if (!o.answered || o.answers.some((a) => a.kind === 'error' && a.id === 900)) throw new Error('login failed');
    }
    // A login costs the daemon a scrypt hash (~0.1 s of CPU): many payloads per login.
    const n = kind === 'payload' ? 100 + rng.int(300) : kind === 'record' ? 1 + rng.int(30) : 1 + rng.int(kind === 'stream' ? 60 : 100);
    // How often this case mutates a message's bytes: from never to mostly.
    const pMutate = rng.pick([0, 0.02, 0.1, 0.4, 0.8]);
    const sealed: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      let plain: Buffer;
      if (kind === 'message') {
        const m = rng.pick(TEMPLATES)(rng, ctx);
        plain = Buffer.from(encodeMessage(m));
        if (rng.chance(pMutate)) plain = mutate(rng, plain);
      } else if (kind === 'payload') {
        // Structural fuzz: well-formed messages (the byte mutations are the message case's job)
        // that fit one record, so that the session lives on through hundreds of payloads.
        const command = rng.pick(ctx.commands);
        do {
          const payload = rng.chance(0.1) ? randomValue(rng) : randomMap(rng);
          plain = Buffer.from(encodeMessage({ kind: 'request', id: i + 1, command, payload, stream: false }));
        } while (plain.length > MAX_RECORD_PLAINTEXT);
      } else if (kind === 'stream') {
        const id = rng.chance(0.8) ? 5 : rng.int(8);
        const choice = i === 0 ? 0 : 1 + rng.int(5);
        const m: Message =
          choice === 0
            ? { kind: 'request', id: 5, command: rng.chance(0.9) ? 'diag.echoStream' : rng.pick(ctx.commands), payload: {}, stream: true }
            : choice === 1 || choice === 2
              ? { kind: 'chunk', id, data: rng.bytes(1 + rng.size(MAX_CHUNK_LEN - 1)) }
              : choice === 3
                ? { kind: 'credit', id, bytes: 1 + rng.int(1 << 24) }
                : choice === 4
                  ? { kind: 'end', id }
                  : { kind: 'cancel', id };
        plain = Buffer.from(encodeMessage(m));
        if (rng.chance(pMutate / 4)) plain = mutate(rng, plain);
      } else {
        plain = Buffer.from(encodeMessage({ kind: 'request', id: i + 1, command: 'ping', payload: {}, stream: false }));
      }
      // A record holds at most 64 KiB: a random payload beyond that is cut (and so malformed).
      if (plain.length > MAX_RECORD_PLAINTEXT) plain = plain.subarray(0, MAX_RECORD_PLAINTEXT);
      inputs.push(plain.toString('hex'));
      if (kind === 'record') {
        const recOut: Buffer[] = [];
        if (rng.chance(0.1)) s.forge.keyUpdate(recOut);
        else s.forge.seal(RECORD_DATA, plain, recOut);
        sealed.push(Buffer.concat(recOut));
      } else sealData(s, plain);
      out.frames++;
    }
    if (kind === 'record') {
      // Tamper with the record stream: flip, cut, duplicate, swap, forge headers.
      const recs = sealed;
      const k = rng.int(7);
      const at = rng.int(recs.length);
      if (k === 0) recs[at]![rng.int(recs[at]!.length)]! ^= 1 << rng.int(8);
      else if (k === 1) recs[at] = recs[at]!.subarray(0, rng.int(recs[at]!.length));
      else if (k === 2) recs.splice(at, 0, recs[at]!);
      else if (k === 3 && recs.length > 1) [recs[0], recs[at]] = [recs[at]!, recs[0]!];
      else if (k === 4) {
        const h = Buffer.alloc(RECORD_HEADER_LEN);
        h[0] = rng.pick([0, RECORD_FINISHED, RECORD_DATA, RECORD_KEY_UPDATE, RECORD_CLOSE, 5, 0xff]);
        h.writeUInt32BE(rng.pick([0, 15, 16, 65552, 65553, 0xffffffff, rng.u32()]), 1);
        recs.splice(at, 0, Buffer.concat([h, rng.bytes(rng.size(64))]));
      } else if (k === 5) recs[at]![0] = rng.pick([RECORD_FINISHED, RECORD_KEY_UPDATE, RECORD_CLOSE, 0, 9]);
      else {
        const o: Buffer[] = [];
        s.forge.seal(rng.pick([RECORD_FINISHED, RECORD_KEY_UPDATE, RECORD_CLOSE]), rng.bytes(rng.size(40)), o);
        recs.splice(at, 0, Buffer.concat(o));
      }
      inputs.push(`records:${recs.map((r) => r.toString('hex')).join(',')}`);
      s.pending = Buffer.concat([s.pending, ...recs]);
      // The sentinel after tampering would be sealed at the wrong sequence number: send as is.
      s.wire.write(s.pending);
      s.pending = Buffer.alloc(0);
      const o = await settleRaw(s);
      checkAnswers(o, kind, inputs, out);
      if (!o.closed && !o.quiet) out.failures.push({ kind: 'no-answer', caseKind: kind, note: 'tampered records neither closed nor answered', inputs });
      return out;
    }
    const o = await flushAndSettle(s, 999_999);
    checkAnswers(o, kind, inputs, out);
    if (!o.answered && !o.closed) out.failures.push({ kind: 'no-answer', caseKind: kind, note: 'the sentinel ping was not answered and the connection stayed open', inputs });
    return out;
  } finally {
    s.wire.destroy();
  }
}

/** After record tampering: read until the connection closes, or all is quiet for a while. */
async function settleRaw(s: Session): Promise<Outcome & { quiet: boolean }> {
  const answers: Message[] = [];
  const events: ClientEvent[] = [];
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  let lastData = Date.now();
  for (;;) {
    const got = s.wire.take();
    if (got.length > 0) {
      lastData = Date.now();
      s.client.receive(got);
    }
    for (;;) {
      const e = s.client.nextEvent();
      if (e.type === 'need-data') break;
      events.push(e);
      if (e.type === 'message') answers.push(e.message);
      else return { closed: true, answers, events, quiet: false };
    }
    if (s.wire.closed) return { closed: true, answers, events, quiet: false };
    // A tampering that happens to be harmless (a duplicate nobody reads yet) leaves it open.
    if (Date.now() - lastData > 1500) return { closed: false, answers, events, quiet: true };
    if (Date.now() > deadline) return { closed: false, answers, events, quiet: false };
    await s.wire.wait(500);
  }
}

export async function caseBan(ctx: Ctx, ip: string): Promise<CaseResult> {
  const out: CaseResult = { frames: 1, failures: [], errorCodes: [], refused: false, banCheck: true };
  const wire = await Wire.open(ctx.port, ip);
  wire.write(HTTP_PROBE);
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  while (!wire.closed && Date.now() < deadline) await wire.wait(1000);
  wire.destroy();
  // The ban is recorded at once; wait for it (not for a fixed time), then try again.
  let banned = false;
  while (!banned && Date.now() < deadline) {
    banned = (await ctx.askTarget({ type: 'banned', seq: 0, ip })).banned === true;
    if (!banned) await new Promise((r) => setTimeout(r, 20));
  }
  const again = await Wire.open(ctx.port, ip);
  const client = new ClientSession({ acceptServerKey: () => true });
  client.start();
  again.write(Buffer.concat(client.takeOutput()));
  while (!again.closed && Date.now() < deadline) await again.wait(1000);
  // Refused at accept: the plaintext refusal line (PROTOCOL.md 3.4) and the close, no ServerHello.
  const reply = again.take();
  again.destroy();
  const refused = reply.subarray(0, REFUSED_BANNED.length).equals(REFUSED_BANNED);
  if (!banned || !refused) {
    const why = !banned ? 'not banned' : `banned but answered ${JSON.stringify(reply.subarray(0, 64).toString('latin1'))}`;
    out.failures.push({ kind: 'not-banned', caseKind: 'ban', note: `${ip} sent HTTP and was ${why}`, inputs: [HTTP_PROBE.toString('hex')] });
  }
  return out;
}
