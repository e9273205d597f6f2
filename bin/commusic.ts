#!/usr/bin/env node
import { runMain } from './cli-util.js';
import { buildProgram } from './commusic-program.js';

void runMain(() => buildProgram().parseAsync().then(() => undefined));
