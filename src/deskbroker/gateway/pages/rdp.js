// HTML5 RDP: guacamole-common-js in the page, the gateway's /ws/rdp tunnels to guacd.
import Guacamole from "./vendor/guacamole/guacamole-common.js";
import { setStatus, socketUrl, takeTicket } from "./common.js";

const ticket = takeTicket();
if (!ticket) {
  setStatus("error", "No ticket: open this desktop from the portal.");
} else {
  // WebSocketTunnel appends "?" and the connect data to its URL.
  const base = socketUrl("/ws/rdp", ticket).split("?")[0];
  const tunnel = new Guacamole.WebSocketTunnel(base);
  const client = new Guacamole.Client(tunnel);
  const screen = document.getElementById("screen");
  screen.appendChild(client.getDisplay().getElement());
  client.onstatechange = (state) => {
    if (state === Guacamole.Client.State.CONNECTED) setStatus("connected", "Connected");
    if (state === Guacamole.Client.State.DISCONNECTED) setStatus("disconnected", "Disconnected");
  };
  client.onerror = (status) => setStatus("error", `Error: ${status.message || status.code}`);
  const query = new URLSearchParams({
    ticket: ticket,
    width: String(screen.clientWidth || 1024),
    height: String(screen.clientHeight || 768),
    dpi: "96",
  });
  client.connect(query.toString());
  const mouse = new Guacamole.Mouse(client.getDisplay().getElement());
  mouse.onEach(["mousedown", "mouseup", "mousemove"], (e) => client.sendMouseState(e.state));
  const keyboard = new Guacamole.Keyboard(document);
  keyboard.onkeydown = (keysym) => client.sendKeyEvent(1, keysym);
  keyboard.onkeyup = (keysym) => client.sendKeyEvent(0, keysym);
  window.addEventListener("unload", () => client.disconnect());
}
