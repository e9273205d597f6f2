#!/usr/bin/env node
import { runMain } from './cli-util.js';
import { program } from './daemon-program.js';

void runMain(() => program.parseAsync().then(() => undefined));
