// noVNC in the page, its RFB bytes relayed by the gateway's /ws/vnc.
import RFB from "./vendor/novnc/core/rfb.js";
import { closeMessage, setStatus, socketUrl, takeTicket } from "./common.js";

const ticket = takeTicket();
if (!ticket) {
  setStatus("error", "No ticket: open this desktop from the portal.");
} else {
  let closeReason = "";
  // noVNC does not pass the WebSocket's close code on, so the socket is made here.
  const socket = new WebSocket(socketUrl("/ws/vnc", ticket));
  socket.binaryType = "arraybuffer";
  socket.addEventListener("close", (event) => {
    closeReason = closeMessage(event.code, event.reason);
  });
  const rfb = new RFB(document.getElementById("screen"), socket, { shared: true });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => setStatus("connected", "Connected"));
  rfb.addEventListener("disconnect", (event) => {
    const message = event.detail.clean ? "Disconnected" : "Connection lost";
    setStatus("disconnected", closeReason || message);
  });
  rfb.addEventListener("securityfailure", (event) => {
    setStatus("error", `Authentication failed: ${event.detail.reason || event.detail.status}`);
  });
  rfb.addEventListener("credentialsrequired", () => {
    const form = document.getElementById("password-form");
    form.hidden = false;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      form.hidden = true;
      rfb.sendCredentials({ password: document.getElementById("password").value });
    }, { once: true });
  });
  window.deskbrokerRfb = rfb;
}
