import { atomicWriteFileSync } from '../../crypto/atomic-file.js';
import { generateKeyPairSync, randomBytes, X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { isIP } from 'node:net';
import forge from 'node-forge';

/**
 * The certificate of the HTTPS health/metrics endpoint: the operator's (certFile + keyFile in the
 * configuration) or, by default, a self-signed RSA-2048 certificate created on the first start
 * in `<data>/tls/` (key mode 0600) and renewed automatically shortly before it expires. The
 * client protocol does not use it; it has its own identity key.
 */
export class TlsCertError extends Error {
  override readonly name = 'TlsCertError';
  constructor(
    readonly code: 'TLS_CERT_MISSING' | 'TLS_CERT_INVALID' | 'TLS_KEY_UNSAFE' | 'TLS_CERT_MISMATCH',
    message: string,
  ) {
    super(message);
  }
}

export interface TlsMaterial {
  readonly key: string;
  readonly cert: string;
  readonly certFile: string;
  readonly keyFile: string;
  /** SHA-256 fingerprint, colon-separated upper-case hex as node:crypto prints it. */
  readonly fingerprint256: string;
  readonly notAfter: Date;
  readonly selfSigned: boolean;
  /** True when this call created (or renewed) the self-signed certificate. */
  readonly created: boolean;
}

export interface TlsCertOptions {
  readonly dataDir: string;
  /** Operator-provided PEM files; both or neither. */
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  /** Extra names for the self-signed certificate's subjectAltName (host names or IPs). */
  readonly altNames?: readonly string[];
  readonly now?: () => number;
}

/** Validity of a self-signed certificate, and how early before expiry it is replaced. */
export const SELF_SIGNED_DAYS = 730;
export const RENEW_BEFORE_DAYS = 30;
const DAY = 86_400_000;

export function selfSignedPaths(dataDir: string): { certFile: string; keyFile: string } {
  return { certFile: join(dataDir, 'tls', 'health-cert.pem'), keyFile: join(dataDir, 'tls', 'health-key.pem') };
}

/** Load the operator's certificate, or load/create/renew the self-signed default. */
export function loadTlsMaterial(opts: TlsCertOptions): TlsMaterial {
  const now = (opts.now ?? Date.now)();
  if (opts.certFile || opts.keyFile) {
    if (!opts.certFile || !opts.keyFile) {
      throw new TlsCertError('TLS_CERT_MISSING', 'health.certFile and health.keyFile must be given together');
    }
    return readPair(opts.certFile, opts.keyFile, false, false, 0o007);
  }
  const { certFile, keyFile } = selfSignedPaths(opts.dataDir);
  if (existsSync(certFile) && existsSync(keyFile)) {
    const m = readPair(certFile, keyFile, true, false, 0o077);
    if (m.notAfter.getTime() - now > RENEW_BEFORE_DAYS * DAY) return m;
  }
  const { cert, key } = createSelfSigned(opts.altNames ?? [], now);
  mkdirSync(dirname(certFile), { recursive: true, mode: 0o700 });
  atomicWriteFileSync(keyFile, Buffer.from(key), 0o600);
  atomicWriteFileSync(certFile, Buffer.from(cert), 0o644);
  return readPair(certFile, keyFile, true, true, 0o077);
}

function readPair(certFile: string, keyFile: string, selfSigned: boolean, created: boolean, forbiddenBits: number): TlsMaterial {
  let st;
  try {
    st = lstatSync(keyFile);
  } catch {
    throw new TlsCertError('TLS_CERT_MISSING', `TLS key file ${keyFile} does not exist`);
  }
  if (!st.isFile()) throw new TlsCertError('TLS_KEY_UNSAFE', `TLS key file ${keyFile} is not a regular file`);
  if ((st.mode & forbiddenBits) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new TlsCertError('TLS_KEY_UNSAFE', `TLS key file ${keyFile} is too widely readable (mode ${mode}); run: chmod 600 ${keyFile}`);
  }
  let cert: string;
  let key: string;
  try {
    cert = readFileSync(certFile, 'utf8');
    key = readFileSync(keyFile, 'utf8');
  } catch {
    throw new TlsCertError('TLS_CERT_MISSING', `cannot read TLS certificate ${certFile} or key ${keyFile}`);
  }
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new TlsCertError('TLS_CERT_INVALID', `${certFile} does not hold a PEM certificate`);
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new TlsCertError('TLS_CERT_INVALID', `${keyFile} does not hold an unencrypted PEM private key`);
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new TlsCertError('TLS_CERT_MISMATCH', `the key in ${keyFile} does not belong to the certificate in ${certFile}`);
  }
  return { key, cert, certFile, keyFile, fingerprint256: x509.fingerprint256, notAfter: new Date(x509.validTo), selfSigned, created };
}

/** A self-signed RSA-2048 / SHA-256 server certificate (node:crypto key, node-forge certificate). */
export function createSelfSigned(extraNames: readonly string[], now = Date.now()): { cert: string; key: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const c = forge.pki.createCertificate();
  c.publicKey = forge.pki.publicKeyFromPem(publicKey);
  // Positive 128-bit serial (top bit clear).
  const serial = randomBytes(16);
  serial[0] = serial[0]! & 0x7f;
  c.serialNumber = serial.toString('hex');
  c.validity.notBefore = new Date(now - 3_600_000);
  c.validity.notAfter = new Date(now + SELF_SIGNED_DAYS * DAY);
  const host = hostname() || 'localhost';
  const attrs = [
    { name: 'commonName', value: host },
    { name: 'organizationName', value: 'ComMusic' },
    { name: 'organizationalUnitName', value: 'commusicd health endpoint (self-signed)' },
  ];
  c.setSubject(attrs);
  c.setIssuer(attrs);
  const names = new Set<string>([host, 'localhost', '127.0.0.1', '::1', ...extraNames.filter((n) => n && n !== '0.0.0.0' && n !== '::')]);
  const altNames = [...names].map((n) => (isIP(n) ? { type: 7, ip: n } : { type: 2, value: n }));
  c.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames },
    { name: 'subjectKeyIdentifier' },
  ]);
  c.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(c), key: privateKey };
}

