// The reference for the load benchmark (scripts/bench-load): the
// architecture chat servers usually have, socket.io on Node with Postgres.
// Each `sendMessage` is persisted with INSERT … RETURNING, then emitted to
// the room (persist, then emit). It is here to be measured against, not used.
import { createServer } from "node:http";
import { Server } from "socket.io";
import pg from "pg";

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
await pool.query(`CREATE TABLE IF NOT EXISTS messages (
  id BIGSERIAL PRIMARY KEY,
  room TEXT NOT NULL,
  sender TEXT NOT NULL,
  client_id UUID UNIQUE,
  text TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now())`);

const http = createServer();
const io = new Server(http, { serveClient: false, transports: ["websocket"] });
io.on("connection", (socket) => {
  const user = socket.handshake.auth?.user ?? socket.id;
  socket.on("join", (room) => socket.join(room));
  socket.on("sendMessage", async (m, ack) => {
    try {
      const r = await pool.query(
        "INSERT INTO messages (room, sender, client_id, text) VALUES ($1, $2, $3, $4) RETURNING id, created_at",
        [m.room, user, m.clientId, m.text],
      );
      io.to(m.room).emit("message", { id: r.rows[0].id, room: m.room, sender: user, text: m.text });
      if (typeof ack === "function") ack({ id: r.rows[0].id });
    } catch (e) {
      if (typeof ack === "function") ack({ error: String(e) });
    }
  });
});
http.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  console.log(JSON.stringify({ port: http.address().port }));
});
