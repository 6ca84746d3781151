//! TCP and TLS connections (RFC 3261 §18.3, §26.2): accepting them within the per-source and
//! stranger limits, opening them to peers, framing what they carry by Content-Length, and the
//! table of open connections that requests to a peer reuse.

use super::*;

impl Transport {
    /// Reuses an open connection to `address` (TLS if `secure`) or opens one from
    /// `interface`'s address.
    pub(super) fn send_tcp(
        &self,
        interface: InterfaceId,
        address: SocketAddr,
        bytes: Bytes,
        secure: bool,
    ) {
        let existing = self.lock().by_address.get(&(address, secure)).copied();
        if let Some(id) = existing {
            if self.send_on(id, bytes.clone()) {
                return;
            }
        }
        let transport = self.clone();
        tokio::spawn(async move {
            let source = transport.local_address_of(interface).map(|a| a.ip());
            let connect = connect_from(source, address);
            match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok(stream)) if secure => {
                    let _ = stream.set_nodelay(true);
                    match transport.tls_connect(stream, address).await {
                        Ok(stream) => {
                            let id = transport.register(stream, address, interface, true, None);
                            transport.send_on(id, bytes);
                        }
                        Err(reason) => {
                            transport.metrics.increment(Counter::TlsHandshakeFailures);
                            tracing::warn!(%address, %reason, "TLS connection to peer failed");
                            transport.lost(address, true).await;
                        }
                    }
                }
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let id = transport.register(stream, address, interface, false, None);
                    transport.send_on(id, bytes);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%address, error = %e, "TCP connect failed");
                    transport.lost(address, secure).await;
                }
                Err(_) => {
                    tracing::warn!(%address, "TCP connect timed out");
                    transport.lost(address, secure).await;
                }
            }
        });
    }

    /// The client side of a TLS connection to a peer: its certificate checked against the CAs
    /// and its `tls_name`.
    pub(super) async fn tls_connect(
        &self,
        stream: TcpStream,
        address: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let Some(tls) = self.tls.as_ref() else {
            return Err("no [sip] tls_ca configured".into());
        };
        let name = tls
            .names
            .get(&address)
            .cloned()
            .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(address.ip().into()));
        match tokio::time::timeout(HANDSHAKE, tls.connector.connect(name, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".into()),
        }
    }

    pub(super) async fn accept_tcp(
        self,
        listener: TcpListener,
        interface: InterfaceId,
        secure: bool,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, address)) => {
                    let address = crate::routing::canonical(address);
                    if self.bans.is_banned(address, transport_now()) {
                        self.metrics.increment(Counter::SipDroppedBanned);
                        continue;
                    }
                    let Some(slot) = self.claim_slot(address) else {
                        // Closed at once (dropped): file descriptors and tasks stay bounded.
                        self.metrics.increment(Counter::TcpConnectionsRefused);
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    if !secure {
                        self.register(stream, address, interface, false, Some(slot));
                        continue;
                    }
                    // The handshake runs beside the accept loop: a slow client holds up nobody.
                    let Some(acceptor) = self.tls.as_ref().and_then(|t| t.acceptor.clone()) else {
                        continue;
                    };
                    let transport = self.clone();
                    self.handshaking.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await;
                        transport.handshaking.fetch_sub(1, Ordering::Relaxed);
                        match handshake {
                            Ok(Ok(stream)) => {
                                transport.register(stream, address, interface, true, Some(slot));
                            }
                            Ok(Err(e)) => {
                                transport.metrics.increment(Counter::TlsHandshakeFailures);
                                tracing::info!(%address, error = %e, "TLS handshake refused");
                            }
                            Err(_) => {
                                transport.metrics.increment(Counter::TlsHandshakeFailures);
                                tracing::info!(%address, "TLS handshake timed out");
                            }
                        }
                    });
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    // The connection waits in the backlog; what is open must close first.
                    self.out_of_descriptors("accepting a TCP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A slot for a new inbound connection from `source`, or `None` when the connection must
    /// be refused: the table is full, or a stranger would take a slot kept for peers or hold
    /// more than its share.
    pub(super) fn claim_slot(&self, source: SocketAddr) -> Option<SourceSlot> {
        let stranger = !self.router.is_peer_host(source.ip());
        let mut connections = self.lock();
        let open = connections.writers.len() + self.handshaking.load(Ordering::Relaxed);
        let from_source = connections
            .by_source
            .get(&source.ip())
            .copied()
            .unwrap_or(0);
        let refused = if open >= self.config.max_tcp_connections {
            Some("connection limit reached")
        } else if stranger && connections.strangers >= self.config.stranger_slots() {
            Some("the remaining slots are kept for peers")
        } else if stranger && from_source >= self.config.max_tcp_connections_per_source {
            Some("too many connections from this address")
        } else {
            None
        };
        if let Some(reason) = refused {
            tracing::debug!(%source, open, from_source, reason, "TCP connection refused");
            return None;
        }
        *connections.by_source.entry(source.ip()).or_insert(0) += 1;
        if stranger {
            connections.strangers += 1;
        }
        Some(SourceSlot {
            connections: Arc::clone(&self.connections),
            source: source.ip(),
            stranger,
        })
    }

    /// Starts the reader and writer tasks of a connection (TLS if `secure`) and returns its id.
    ///
    /// `slot` is the claim of a connection the peer opened (`None`: the gateway opened it).
    pub(super) fn register<S>(
        &self,
        stream: S,
        address: SocketAddr,
        interface: InterfaceId,
        secure: bool,
        slot: Option<SourceSlot>,
    ) -> ConnectionId
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (read_half, mut write_half) = tokio::io::split(stream);
        let (writer, mut queue) = mpsc::channel::<Bytes>(1024);
        {
            let mut connections = self.lock();
            connections.writers.insert(id, writer);
            connections.by_address.insert((address, secure), id);
        }
        let closed = CancellationToken::new();
        let writer_closed = closed.clone();
        tokio::spawn(async move {
            loop {
                let bytes = tokio::select! {
                    _ = writer_closed.cancelled() => break,
                    b = queue.recv() => match b { Some(b) => b, None => break },
                };
                if write_half.write_all(&bytes).await.is_err() {
                    break;
                }
                // A TLS stream buffers records until flushed.
                if write_half.flush().await.is_err() {
                    break;
                }
            }
            writer_closed.cancel();
        });
        let transport = self.clone();
        tokio::spawn(async move {
            let flow = if secure {
                Flow::Tls(interface, id)
            } else {
                Flow::Tcp(interface, id)
            };
            // A peer's host may open a connection and wait in silence for its first call; a
            // stranger must speak at once.
            let stranger = slot.as_ref().is_some_and(|s| s.stranger);
            transport
                .read_connection(read_half, address, flow, stranger, &closed)
                .await;
            drop(slot);
            closed.cancel();
            {
                let mut connections = transport.lock();
                connections.writers.remove(&id);
                if connections.by_address.get(&(address, secure)) == Some(&id) {
                    connections.by_address.remove(&(address, secure));
                }
            }
            if !transport.shutdown.is_cancelled() {
                transport.lost(address, secure).await;
            }
        });
        id
    }

    pub(super) async fn lost(&self, address: SocketAddr, secure: bool) {
        let _ = self
            .inbound
            .send(TransportEvent::ConnectionLost { address, secure })
            .await;
    }

    /// Whether a connection to `address` (TLS if `secure`) is open now.
    pub fn is_connected(&self, address: SocketAddr, secure: bool) -> bool {
        self.lock().by_address.contains_key(&(address, secure))
    }

    /// Reads and frames one connection until it closes. A `stranger`'s connection (opened by
    /// an address that is no peer's host) must deliver its first whole message within
    /// `tcp_request_timeout`; on every connection a message must be whole within that long of
    /// its first byte.
    pub(super) async fn read_connection(
        &self,
        mut reader: impl AsyncRead + Unpin,
        address: SocketAddr,
        flow: Flow,
        stranger: bool,
        closed: &CancellationToken,
    ) {
        let id = match flow {
            Flow::Tcp(_, id) | Flow::Tls(_, id) => id,
            Flow::Udp(_) => return,
        };
        let mut buffer = BytesMut::with_capacity(8192);
        let mut framer = message::Framer::default();
        let request_timeout = self.config.tcp_request_timeout;
        // Until when the message under way (or, at first, the first message) must be whole.
        let mut deadline = stranger.then(|| transport_now() + request_timeout);
        loop {
            // Deliver every whole message already buffered (pipelining), then read more.
            loop {
                match framer.next(&buffer, self.config.max_message_size) {
                    Ok(Frame::Incomplete) => break,
                    Ok(Frame::KeepAlive { length, ping }) => {
                        buffer.advance(length);
                        if ping {
                            self.send_on(id, Bytes::from_static(b"\r\n"));
                        }
                    }
                    Ok(Frame::Message { length }) => {
                        deadline = None;
                        let bytes = buffer.split_to(length);
                        if let Some(hep) = &self.hep {
                            let tls = matches!(flow, Flow::Tls(..));
                            let local = self.local_of(flow.interface(), tls);
                            hep.capture(address, local, Carried::Tcp, &bytes);
                        }
                        let inbound = Inbound {
                            received: transport_now(),
                            message: message::parse_with(&bytes, || self.charset_of(address)),
                            source: address,
                            flow,
                        };
                        if self
                            .inbound
                            .send(TransportEvent::Inbound(inbound))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        self.metrics.increment(Counter::SipParseErrors);
                        tracing::warn!(%address, error = %e, "closing TCP connection");
                        return;
                    }
                }
            }
            if deadline.is_none() && !buffer.is_empty() {
                deadline = Some(transport_now() + request_timeout);
            }
            let wait = match deadline {
                Some(deadline) => deadline.saturating_duration_since(transport_now()),
                None => self.config.tcp_idle_timeout,
            };
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = closed.cancelled() => return,
                r = tokio::time::timeout(wait, reader.read_buf(&mut buffer)) => r,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) if deadline.is_some() => {
                    self.metrics.increment(Counter::TcpRequestTimeouts);
                    tracing::debug!(%address, "closing TCP connection: no whole message in time");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%address, "closing idle TCP connection");
                    return;
                }
            }
        }
    }
}

/// A TCP connection to `address` from `source` (an interface's address; any port): the peer
/// sees the address of its own network. Unbound when the families differ or none is given.
async fn connect_from(
    source: Option<std::net::IpAddr>,
    address: SocketAddr,
) -> std::io::Result<TcpStream> {
    let source = source.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == address.is_ipv4());
    let Some(source) = source else {
        return TcpStream::connect(address).await;
    };
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(address).await
}
