import assert from 'node:assert/strict';
import { capturingRandomness } from './helpers/ephemeral.js';
import test from 'node:test';
import { CLIENT_RECORD_INPUT, CLIENT_TRANSITIONS, ClientSession, pinFingerprint, type ClientEvent, type ClientState } from '../protocol/client-session.js';
import { RECORD_CLOSE, RECORD_DATA, RECORD_FINISHED, RECORD_KEY_UPDATE, SERVER_HELLO_LEN } from '../protocol/constants.js';
import { parseServerHello } from '../protocol/handshake-messages.js';
import { deriveSessionSecrets, type SessionSecrets } from '../protocol/key-schedule.js';
import { joinBatch } from '../protocol/batch.js';
import { encodeMessage } from '../protocol/messages.js';
import { RecordSealer } from '../protocol/record-layer.js';
import { SERVER_RECORD_INPUT, SERVER_TRANSITIONS, ServerSession, type ServerEvent, type ServerState } from '../protocol/server-session.js';
import { concat, drain, testIdentity } from './helpers/pair.js';

/**
 * Every record type against the state table in every state, for both sides (PROTOCOL.md 5.1:
 * a DATA, KEY_UPDATE or CLOSE before the peer's FINISHED closes the connection). One test per
 * (state, record type) edge; the expected outcome is read from the table itself, so a table
 * edge and the code that walks it cannot drift apart. Unknown record types are refused by the
 * record layer in every state.
 */

/** Record types on the wire: the four of section 5 and unknown ones around them. */
const RECORD_TYPES: readonly number[] = [0x00, RECORD_FINISHED, RECORD_DATA, RECORD_KEY_UPDATE, RECORD_CLOSE, 0x05, 0x7f, 0xff];

interface Handshake {
  client: ClientSession;
  server: ServerSession;
  secrets: SessionSecrets;
  clientHello: Buffer;
  serverHello: Buffer;
  /** The server's FINISHED record (its first record). */
  serverFinishedRecord: Buffer;
}

/** A handshake in memory (version 2: DATA bodies are batches) that also hands the test both directions' keys. */
function handshake(): Handshake {
  const identity = testIdentity();
  const cap = capturingRandomness();
  const client = new ClientSession({
    acceptServerKey: pinFingerprint(identity.fingerprint),
    randomness: cap.randomness,
  });
  const server = new ServerSession({ identity });
  client.start();
  const clientHello = concat(client.takeOutput());
  server.receive(clientHello);
  assert.equal(server.nextEvent().type, 'hello');
  const flight = concat(server.takeOutput());
  const serverHello = flight.subarray(0, SERVER_HELLO_LEN);
  const sh = parseServerHello(serverHello);
  const shared = cap.shared(sh.share)!;
  const secrets = deriveSessionSecrets(shared, clientHello, sh.signed, sh.signature);
  return { client, server, secrets, clientHello, serverHello, serverFinishedRecord: flight.subarray(SERVER_HELLO_LEN) };
}

/** A plausible body for each record type (the legal content where the type is legal). */
function bodyFor(type: number, finished: Buffer): Buffer {
  switch (type) {
    case RECORD_FINISHED:
      return finished;
    case RECORD_DATA:
      return joinBatch([encodeMessage({ kind: 'request', id: 1, command: 'ping', payload: {}, stream: false })]);
    case RECORD_KEY_UPDATE:
      return Buffer.alloc(0);
    case RECORD_CLOSE:
      return Buffer.from([0, 0]);
    default:
      return Buffer.from([1, 2, 3]);
  }
}

/** One record; a KEY_UPDATE through keyUpdate(), so the forging side moves to the next key too. */
function seal(sealer: RecordSealer, type: number, body: Buffer): Buffer {
  const out: Buffer[] = [];
  if (type === RECORD_KEY_UPDATE) sealer.keyUpdate(out);
  else sealer.seal(type, body, out);
  return concat(out);
}

type Outcome = 'accepted' | 'refused';

function serverOutcome(events: ServerEvent[]): { outcome: Outcome; code?: string } {
  const last = events[events.length - 1]!;
  if (last.type === 'error') return { outcome: 'refused', code: last.error.code };
  return { outcome: 'accepted' };
}

function clientOutcome(events: ClientEvent[]): { outcome: Outcome; code?: string } {
  const last = events[events.length - 1]!;
  if (last.type === 'error') return { outcome: 'refused', code: last.error.code };
  return { outcome: 'accepted' };
}

/** Puts a server session into `state`; returns it and a sealer at the client's next sequence number. */
function serverIn(state: ServerState): { h: Handshake; forge: RecordSealer } {
  const h = handshake();
  const forge = new RecordSealer(h.secrets.clientToServer);
  if (state === 'AWAIT_CLIENT_FINISHED') return { h, forge };
  h.server.receive(seal(forge, RECORD_FINISHED, h.secrets.clientFinished));
  assert.equal(h.server.nextEvent().type, 'established');
  if (state === 'ESTABLISHED') return { h, forge };
  if (state === 'CLOSED') {
    h.server.receive(seal(forge, RECORD_CLOSE, Buffer.from([0, 0])));
    assert.equal(h.server.nextEvent().type, 'closed');
    return { h, forge };
  }
  // FAILED: a record that fails authentication.
  const bad = seal(forge, RECORD_DATA, bodyFor(RECORD_DATA, h.secrets.clientFinished));
  bad[bad.length - 1]! ^= 1;
  h.server.receive(bad);
  assert.equal(h.server.nextEvent().type, 'error');
  return { h, forge };
}

const SERVER_STATES: ServerState[] = ['AWAIT_CLIENT_FINISHED', 'ESTABLISHED', 'CLOSED', 'FAILED'];

for (const state of SERVER_STATES) {
  for (const type of RECORD_TYPES) {
    const input = SERVER_RECORD_INPUT[type];
    const legal = input !== undefined && SERVER_TRANSITIONS[state][input] !== undefined;
    test(`server state table: ${state} x record type 0x${type.toString(16).padStart(2, '0')} (${input ?? 'unknown'}) is ${legal ? 'legal' : 'refused'}`, () => {
      const { h, forge } = serverIn(state);
      h.server.receive(seal(forge, type, bodyFor(type, h.secrets.clientFinished)));
      const events = drain(h.server);
      if (state === 'CLOSED') {
        // A closed session reads nothing more: no message, no event but its terminal one.
        assert.deepEqual(events, [{ type: 'closed', code: 0 }]);
        return;
      }
      if (state === 'FAILED') {
        assert.equal(events.length, 1);
        assert.equal(events[0]!.type, 'error');
        return;
      }
      const got = serverOutcome(events);
      if (!legal) {
        assert.equal(got.outcome, 'refused', `${state} must refuse ${input ?? 'an unknown type'}: ${JSON.stringify(events)}`);
        assert.equal(got.code, input === undefined ? 'BAD_RECORD_TYPE' : 'UNEXPECTED_RECORD');
        assert.equal(h.server.state, 'FAILED');
        assert.equal(events.some((e) => e.type === 'message' || e.type === 'established'), false, 'nothing is served');
        return;
      }
      assert.equal(got.outcome, 'accepted', JSON.stringify(events));
      if (input === 'key-update') {
        // The rekey happened: a DATA record under the next key is read.
        h.server.receive(seal(forge, RECORD_DATA, bodyFor(RECORD_DATA, h.secrets.clientFinished)));
        const after = drain(h.server);
        assert.equal(after[0]!.type, 'message');
      }
    });
  }
}

test('server: a KEY_UPDATE before the client FINISHED closes, and a FINISHED under the next key is never read', () => {
  const h = handshake();
  const forge = new RecordSealer(h.secrets.clientToServer);
  const out: Buffer[] = [];
  forge.keyUpdate(out);
  forge.seal(RECORD_FINISHED, h.secrets.clientFinished, out);
  h.server.receive(concat(out));
  const events = drain(h.server);
  assert.deepEqual(
    events.map((e) => (e.type === 'error' ? e.error.code : e.type)),
    ['UNEXPECTED_RECORD'],
  );
  assert.equal(h.server.state, 'FAILED');
});

/** Puts a client session into `state`; returns it and a sealer at the server's next sequence number. */
function clientIn(state: ClientState): { h: Handshake; forge: RecordSealer } {
  const h = handshake();
  const forge = new RecordSealer(h.secrets.serverToClient);
  h.client.receive(h.serverHello);
  assert.equal(h.client.nextEvent().type, 'need-data');
  if (state === 'AWAIT_SERVER_FINISHED') return { h, forge };
  h.client.receive(seal(forge, RECORD_FINISHED, h.secrets.serverFinished));
  assert.equal(h.client.nextEvent().type, 'established');
  if (state === 'ESTABLISHED') return { h, forge };
  if (state === 'CLOSED') {
    h.client.receive(seal(forge, RECORD_CLOSE, Buffer.from([0, 0])));
    assert.equal(h.client.nextEvent().type, 'closed');
    return { h, forge };
  }
  const bad = seal(forge, RECORD_DATA, joinBatch([encodeMessage({ kind: 'end', id: 1 })]));
  bad[bad.length - 1]! ^= 1;
  h.client.receive(bad);
  assert.equal(h.client.nextEvent().type, 'error');
  return { h, forge };
}

const CLIENT_STATES: ClientState[] = ['AWAIT_SERVER_FINISHED', 'ESTABLISHED', 'CLOSED', 'FAILED'];

for (const state of CLIENT_STATES) {
  for (const type of RECORD_TYPES) {
    const input = CLIENT_RECORD_INPUT[type];
    const legal = input !== undefined && CLIENT_TRANSITIONS[state][input] !== undefined;
    test(`client state table: ${state} x record type 0x${type.toString(16).padStart(2, '0')} (${input ?? 'unknown'}) is ${legal ? 'legal' : 'refused'}`, () => {
      const { h, forge } = clientIn(state);
      const body = type === RECORD_DATA ? joinBatch([encodeMessage({ kind: 'end', id: 1 })]) : bodyFor(type, h.secrets.serverFinished);
      h.client.receive(seal(forge, type, body));
      const events = drain(h.client);
      if (state === 'CLOSED') {
        assert.deepEqual(events, [{ type: 'closed', code: 0 }]);
        return;
      }
      if (state === 'FAILED') {
        assert.equal(events.length, 1);
        assert.equal(events[0]!.type, 'error');
        return;
      }
      const got = clientOutcome(events);
      if (!legal) {
        assert.equal(got.outcome, 'refused', `${state} must refuse ${input ?? 'an unknown type'}: ${JSON.stringify(events)}`);
        assert.equal(got.code, input === undefined ? 'BAD_RECORD_TYPE' : 'UNEXPECTED_RECORD');
        assert.equal(h.client.state, 'FAILED');
        return;
      }
      assert.equal(got.outcome, 'accepted', JSON.stringify(events));
    });
  }
}

test('every record type of section 5 is an input of both tables', () => {
  for (const t of [RECORD_FINISHED, RECORD_DATA, RECORD_KEY_UPDATE, RECORD_CLOSE]) {
    assert.ok(SERVER_RECORD_INPUT[t], `server table has record type ${t}`);
    assert.ok(CLIENT_RECORD_INPUT[t], `client table has record type ${t}`);
  }
  assert.equal(SERVER_TRANSITIONS.AWAIT_CLIENT_FINISHED['key-update'], undefined);
  assert.equal(CLIENT_TRANSITIONS.AWAIT_SERVER_FINISHED['key-update'], undefined);
});
