#!/usr/bin/env node
import { runMain } from './cli-util.js';
import { program } from './ctl-program.js';

void runMain(() => program.parseAsync().then(() => undefined));
