// xterm.js in the page; the gateway's /ws/ssh logs into the desktop with asyncssh.
// Binary frames are terminal bytes; text frames are JSON control messages.
import { closeMessage, setStatus, socketUrl, takeTicket } from "./common.js";

const ticket = takeTicket();
const term = new window.Terminal({ cursorBlink: true, convertEol: false });
term.open(document.getElementById("screen"));
window.deskbrokerTerminal = term;

function fit() {
  // A character cell's size from the rendered terminal, to fill the window.
  const screen = document.getElementById("screen");
  const cell = term.element.querySelector(".xterm-rows > div");
  if (!cell || !cell.offsetHeight) return;
  const cols = Math.max(20, Math.floor(screen.clientWidth / (cell.offsetWidth / term.cols)));
  const rows = Math.max(5, Math.floor(screen.clientHeight / cell.offsetHeight));
  if (cols !== term.cols || rows !== term.rows) term.resize(cols, rows);
}

if (!ticket) {
  setStatus("error", "No ticket: open this desktop from the portal.");
} else {
  const socket = new WebSocket(socketUrl("/ws/ssh", ticket));
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  let password = null; // a password being typed (not echoed), or null
  const send = (obj) => socket.send(JSON.stringify(obj));

  socket.addEventListener("open", () => {
    setStatus("connected", "Connected");
    fit();
    send({ type: "resize", cols: term.cols, rows: term.rows });
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "prompt") {
      password = "";
      term.write(message.message);
    } else if (message.type === "status") {
      term.write(`\r\n${message.message}\r\n`);
    }
  });
  socket.addEventListener("close", (event) => {
    setStatus("disconnected", closeMessage(event.code, event.reason));
    term.write(`\r\n[${closeMessage(event.code, event.reason)}]\r\n`);
  });
  term.onData((data) => {
    if (socket.readyState !== WebSocket.OPEN) return;
    if (password === null) {
      socket.send(encoder.encode(data));
      return;
    }
    for (const ch of data) {
      if (ch === "\r" || ch === "\n") {
        term.write("\r\n");
        send({ type: "password", value: password });
        password = null;
        return;
      } else if (ch === "\x7f") {
        password = password.slice(0, -1);
      } else {
        password += ch;
      }
    }
  });
  term.onResize(({ cols, rows }) => {
    if (socket.readyState === WebSocket.OPEN) send({ type: "resize", cols, rows });
  });
  window.addEventListener("resize", fit);
  term.focus();
}
