/**
 * The relay: a local gateway that holds a client key and offers the text line protocol
 * of wire/PROTOCOL.md section 11 on a TCP port, so that shell scripts publish and
 * subscribe with `nc`. It is built on the client library, like `fitb pub` and `fitb sub`.
 */
export { RelayLineParser, type RelayCommand, type RelayInput, type RelayParserOptions } from "./parser.ts";
export { ackLine, endLine, errLine, eventBytes, isLineSafe, oneLineReason, OK_LINE, PONG_LINE, type EventHeader } from "./format.ts";
export { RelayConnection, errorLine, type LineSocket, type RelayBackend } from "./connection.ts";
export { RelayServer, RelayListenError, RELAY_STOP_GRACE_MS, RELAY_KEEPALIVE_DELAY_MS, type RelayServerOptions } from "./server.ts";
export { PublishBytesBudget } from "./publish-bytes.ts";
export { RelayOutputBytes } from "./output-bytes.ts";
export { DEFAULT_RELAY_LIMITS, resolveRelayLimits, type RelayLimits, type ResolvedRelayLimits } from "./limits.ts";
export {
  DEFAULT_RELAY_HOST,
  DEFAULT_RELAY_LISTEN,
  DEFAULT_RELAY_PORT,
  isLoopbackHost,
  parseListenAddress,
  RELAY_LISTEN_NONE,
  remoteListenRefusal,
  type ListenAddress,
  type ListenParse,
} from "./listen.ts";
