#!/usr/bin/env ruby
# Get an access token from jwksd over its Unix socket and call a FHIR
# endpoint with it; on a 401, drop the token and retry once. jwksd signs the
# assertion, calls the token endpoint and caches the token. Standard library
# only.
#
# FLOW=assertion shows the older path instead: get a client assertion from
# the socket and post it to the token endpoint yourself.
require "json"
require "net/http"
require "socket"
require "uri"

SOCKET = ENV.fetch("JWKSD_SOCKET", "/run/jwksd/jwksd.sock")
CLIENT_ID = ENV.fetch("CLIENT_ID")
TOKEN_URL = ENV.fetch("TOKEN_URL")
SCOPE = ENV.fetch("SCOPE", "system/*.rs")
FHIR_URL = ENV["FHIR_URL"]

# One request to jwksd's socket; the parsed JSON answer (nil for 204).
def jwksd(method, path, body)
  text = JSON.generate(body)
  UNIXSocket.open(SOCKET) do |s|
    s.write("#{method} #{path} HTTP/1.1\r\nHost: jwksd\r\nContent-Type: application/json\r\n" \
            "Content-Length: #{text.bytesize}\r\nConnection: close\r\n\r\n#{text}")
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
    return nil if status == 204
    answer = JSON.parse(payload)
    abort "jwksd refused (#{status}): #{answer['error']}: #{answer['message']}" unless status == 200
    answer
  end
end

# --- the token path: one request to the socket ---------------------------

KEY = { client_id: CLIENT_ID, token_url: TOKEN_URL, scope: SCOPE }.freeze

def access_token
  jwksd("POST", "/v1/tokens", KEY).fetch("access_token")
end

def fhir_get(token)
  uri = URI(FHIR_URL)
  Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https") do |h|
    h.get(uri.request_uri, "Authorization" => "Bearer #{token}")
  end
end

def token_flow
  token = access_token
  return { token_type: "Bearer", access_token: token } unless FHIR_URL
  res = fhir_get(token)
  if res.code == "401"
    # The resource server refused the token: drop it from jwksd's cache and
    # try once more.
    jwksd("DELETE", "/v1/tokens", KEY)
    res = fhir_get(access_token)
  end
  abort "FHIR server answered #{res.code}" unless res.is_a?(Net::HTTPSuccess)
  JSON.parse(res.body)
end

# --- the assertion path: post the assertion yourself ---------------------

def assertion_flow
  jwt = jwksd("POST", "/v1/assertions", { client_id: CLIENT_ID, audience: TOKEN_URL }).fetch("assertion")
  res = Net::HTTP.post_form(URI(TOKEN_URL),
                            "grant_type" => "client_credentials",
                            "client_assertion_type" => "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                            "client_assertion" => jwt,
                            "scope" => SCOPE)
  abort "token endpoint answered #{res.code}: #{res.body}" unless res.is_a?(Net::HTTPSuccess)
  JSON.parse(res.body)
end

puts JSON.generate(ENV["FLOW"] == "assertion" ? assertion_flow : token_flow)
