// Routes grpc-js's own diagnostics into our structured logs instead of stderr.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';

export function routeGrpcLogs(logger: Logger): void {
  const log = logger.child({ room: 'grpc' });
  const text = (args: unknown[]) => args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ');
  grpc.setLogger({
    error: (...args: unknown[]) => log.error(text(args)),
    info: (...args: unknown[]) => log.info(text(args)),
    debug: (...args: unknown[]) => log.debug(text(args)),
  });
  grpc.setLogVerbosity(logger.isLevelEnabled('debug') ? grpc.logVerbosity.DEBUG : grpc.logVerbosity.ERROR);
}
