#!/usr/bin/env node
import { jsonBeforeCommand, runMain } from './cli-util.js';
import { program } from './ctl-program.js';

void runMain(() => program.parseAsync(jsonBeforeCommand(program)).then(() => undefined));
