#!/usr/bin/env ruby
# Get a client assertion from jwksd over its Unix socket and exchange it for
# an access token. Standard library only.
require "json"
require "net/http"
require "socket"
require "uri"

SOCKET = ENV.fetch("JWKSD_SOCKET", "/run/jwksd/jwksd.sock")
CLIENT_ID = ENV.fetch("CLIENT_ID")
TOKEN_URL = ENV.fetch("TOKEN_URL")
SCOPE = ENV.fetch("SCOPE", "system/*.rs")

def assertion
  body = JSON.generate(client_id: CLIENT_ID, audience: TOKEN_URL)
  UNIXSocket.open(SOCKET) do |s|
    s.write("POST /v1/assertions HTTP/1.1\r\nHost: jwksd\r\nContent-Type: application/json\r\n" \
            "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
    response = s.read
    head, payload = response.split("\r\n\r\n", 2)
    status = head[/\AHTTP\/1\.1 (\d+)/, 1].to_i
    if head =~ /transfer-encoding: chunked/i
      decoded = +""
      rest = payload
      loop do
        size_line, rest = rest.split("\r\n", 2)
        size = size_line.to_i(16)
        break if size.zero?
        decoded << rest[0, size]
        rest = rest[(size + 2)..]
      end
      payload = decoded
    end
    answer = JSON.parse(payload)
    abort "jwksd refused (#{status}): #{answer['error']}: #{answer['message']}" unless status == 200
    answer.fetch("assertion")
  end
end

def token(jwt)
  res = Net::HTTP.post_form(URI(TOKEN_URL),
                            "grant_type" => "client_credentials",
                            "client_assertion_type" => "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                            "client_assertion" => jwt,
                            "scope" => SCOPE)
  abort "token endpoint answered #{res.code}: #{res.body}" unless res.is_a?(Net::HTTPSuccess)
  JSON.parse(res.body)
end

puts JSON.generate(token(assertion))
