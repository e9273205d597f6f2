import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * An LD_PRELOAD shim for the temporary-file tests (issue 10): unlink()/unlinkat() of a path
 * containing "etilqs" (SQLite's temporary file prefix) does nothing, so every temporary file the
 * engine creates stays in its folder to be searched afterwards.
 */
export const SHIM = `
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <fcntl.h>
/* Keep SQLite's temporary files: unlink() of a path containing "etilqs" does nothing. */
int unlink(const char *path) {
  static int (*real)(const char *) = 0;
  if (!real) real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
  if (path && strstr(path, "etilqs")) return 0;
  return real(path);
}
int unlinkat(int dirfd, const char *path, int flags) {
  static int (*real)(int, const char *, int) = 0;
  if (!real) real = (int (*)(int, const char *, int))dlsym(RTLD_NEXT, "unlinkat");
  if (path && strstr(path, "etilqs")) return 0;
  return real(dirfd, path, flags);
}
`;


/** True when a C compiler is there to build the shim. */
export const hasCc = spawnSync('cc', ['--version']).status === 0;

/** Compile the unlink-suppressing shim into `dir` (needs cc); returns the .so path. */
export function buildShim(dir: string): string {
  writeFileSync(join(dir, 'keep-temp.c'), SHIM);
  const so = join(dir, 'keep-temp.so');
  const r = spawnSync('cc', ['-shared', '-fPIC', '-O1', '-o', so, join(dir, 'keep-temp.c'), '-ldl'], { encoding: 'utf8' });
  assert.equal(r.status, 0, `cc failed: ${r.stderr}`);
  return so;
}

