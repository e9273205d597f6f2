import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { checkLayers, repoRoot } from '../tools/check-layers.js';

/**
 * Issue 12 point 1: the layer rules (.dependency-cruiser.cjs: imports point down, protocol/ pure,
 * storage/ and crypto/ without sockets, no circles, no devDependency in the product) hold for the
 * whole repository, and a wrong import fails the check with a message naming the rule.
 */
test('layers: the repository breaks no layer rule and has no import circle', { timeout: 150_000 }, () => {
  const r = checkLayers();
  assert.equal(r.status, 0, r.output);
  assert.match(r.output, /no dependency violations found/);
});

test('layers: a deliberately wrong import fails the check, naming the rule', { timeout: 150_000 }, () => {
  const r = checkLayers(join(repoRoot(), 'tests', 'fixtures', 'layer-violation'));
  assert.notEqual(r.status, 0, r.output);
  assert.match(r.output, /error protocol-pure: protocol\/frame\.ts → (node:)?net/);
  assert.match(r.output, /error protocol-not-up: protocol\/frame\.ts → storage\/rows\.ts/);
  assert.match(r.output, /error storage-crypto-no-sockets: storage\/rows\.ts → (node:)?tls/);
  assert.match(r.output, /error no-circular: protocol\/(frame|peer)\.ts/);
});
