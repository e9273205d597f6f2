/**
 * The layer rules of the ComMusic server, checked by dependency-cruiser in `npm test`
 * (`npm run check:layers`; tests/layers.test.ts also shows a wrong import failing).
 *
 * Layers, imports point down only:
 *   bin/ -> daemon/ -> cluster/ -> client/ -> protocol/, storage/ -> crypto/
 * protocol/ is pure (no sockets, files, processes, threads or timers); storage/ and crypto/ know
 * nothing of sockets. tools/, bench/ and tests/ may import anything, but nothing imports them.
 * No import circle anywhere. Production folders use no devDependency.
 */
const PRODUCTION = '^(bin|daemon|cluster|client|protocol|storage|crypto)/';
const SOCKETS = '^(node:)?(net|tls|http|https|http2|dgram)$';

/** A rule "FROM may not import any of TO", named `NAME`. */
const above = (name, from, to, comment) => ({ name, comment, severity: 'error', from: { path: `^${from}/` }, to: { path: `^(${to.join('|')})/` } });

module.exports = {
  forbidden: [
    { name: 'no-circular', comment: 'import circles make the load order and the layers unreadable; cut the cycle at a shared type or a lower module', severity: 'error', from: {}, to: { circular: true } },
    above('daemon-not-to-bin', 'daemon', ['bin'], 'daemon/ is below bin/: the programs wire the daemon, not the other way round'),
    above('cluster-not-up', 'cluster', ['bin', 'daemon'], 'cluster/ is below daemon/: the daemon assembles the cluster subsystem'),
    above('client-not-up', 'client', ['bin', 'daemon', 'cluster'], 'client/ (the SDK) is below the daemon and the cluster'),
    above('protocol-not-up', 'protocol', ['bin', 'daemon', 'cluster', 'client', 'storage'], 'protocol/ only uses crypto/'),
    above('storage-not-up', 'storage', ['bin', 'daemon', 'cluster', 'client', 'protocol'], 'storage/ only uses crypto/'),
    above('crypto-is-bottom', 'crypto', ['bin', 'daemon', 'cluster', 'client', 'protocol', 'storage'], 'crypto/ is the lowest layer'),
    {
      name: 'production-not-to-dev-folders',
      comment: 'the product never imports tests/, bench/ or tools/',
      severity: 'error',
      from: { path: PRODUCTION },
      to: { path: '^(tests|bench|tools)/' },
    },
    {
      name: 'protocol-pure',
      comment: 'protocol/ is sans-I/O: no sockets, files, processes, threads or timers (the caller passes bytes and `now`)',
      severity: 'error',
      from: { path: '^protocol/' },
      to: { dependencyTypes: ['core'], path: '^(node:)?(net|tls|http|https|http2|dgram|fs|fs/promises|child_process|worker_threads|cluster|timers|timers/promises|dns|readline)$' },
    },
    {
      name: 'storage-crypto-no-sockets',
      comment: 'storage/ and crypto/ know nothing of sockets',
      severity: 'error',
      from: { path: '^(storage|crypto)/' },
      to: { dependencyTypes: ['core'], path: SOCKETS },
    },
    {
      name: 'no-dev-dependency-in-production',
      comment: 'a devDependency is not installed in production (npm ci --omit=dev): the product may not import one',
      severity: 'error',
      from: { path: PRODUCTION },
      to: { dependencyTypes: ['npm-dev'], dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'every import resolves to a file or a package',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    exclude: { path: '^(dist|tests/fixtures)/' },
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'] },
  },
};
