import { test } from 'node:test';
import assert from 'node:assert/strict';
import { INITIAL_STREAM_WINDOW } from '../protocol/constants.js';
import { OutboundCredit } from '../protocol/flow.js';

/**
 * OutboundCredit.tryTakeUpTo (the download path's promise-free take): it takes what takeUpTo
 * would, returns 0 instead of waiting, and fails like takeUpTo once the stream is aborted.
 */
test('tryTakeUpTo takes min(credit, max), returns 0 without credit, and the window is the same as with takeUpTo', async () => {
  const c = new OutboundCredit();
  assert.equal(c.tryTakeUpTo(1000), 1000);
  assert.equal(c.tryTakeUpTo(INITIAL_STREAM_WINDOW), INITIAL_STREAM_WINDOW - 1000);
  assert.equal(c.tryTakeUpTo(1), 0, 'no credit left: nothing taken, no wait');
  c.add(10);
  assert.equal(c.tryTakeUpTo(100), 10);
  const waiting = c.takeUpTo(100);
  c.add(40);
  assert.equal(await waiting, 40);
  c.abort(new Error('gone'));
  assert.throws(() => c.tryTakeUpTo(1), /gone/);
  await assert.rejects(c.takeUpTo(1), /gone/);
});
