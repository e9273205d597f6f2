#!/usr/bin/env node
import { jsonBeforeCommand, runMain } from './cli-util.js';
import { buildProgram } from './commusic-program.js';

void runMain(() => {
  const program = buildProgram();
  return program.parseAsync(jsonBeforeCommand(program)).then(() => undefined);
});
