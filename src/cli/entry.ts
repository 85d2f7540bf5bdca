#!/usr/bin/env node
// The program's entry point. Loading the daemon's modules takes hundreds of
// milliseconds on a busy node; the signal handlers go in before that, so a
// SIGTERM at any moment is a clean stop (exit 0) instead of a kill (143).
import './early-signals.js';
import { capYoungGeneration } from './young-generation.js';

// Before anything sizeable is allocated: the new space then never grows (see young-generation.ts).
capYoungGeneration();

await import('./main.js');
